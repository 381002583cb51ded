"""The machine, written next to every number: `streamcad.machine.machine_info` (CPU model and
cores, memory, GPUs and driver, the versions of the libraries on the measured path), the one
definition that training records and `streamcad info` use too. Re-exported here for the
benchmarks that import it from this module."""

from __future__ import annotations

from streamcad.machine import machine_info

__all__ = ["machine_info"]
