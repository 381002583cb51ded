"""Docs that are true: README's config block is `streamcad info --config` (generated from the
classes in streamcad/config.py), it loads back to exactly the defaults, and every key of every
section is in it; every command-line flag docs/TRAINING.md names exists."""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path

import msgspec

from streamcad.commands.info import default_config_toml
from streamcad.config import RunConfig, config_from_dict

REPO = Path(__file__).resolve().parents[1]


def _readme_config_block() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("### Config"):]
    m = re.search(r"```toml\n(.*?)```", section, re.S)
    assert m, "README's '### Config' section has no ```toml block"
    return m.group(1)


def test_readme_config_block_is_the_generated_one():
    block = _readme_config_block()
    assert block == default_config_toml(), (
        "README's config block is out of date: regenerate it with `python -m tests.test_docs_config`"
    )


def test_generated_config_loads_back_to_the_defaults_and_names_every_key():
    text = default_config_toml()
    assert config_from_dict(tomllib.loads(text)) == RunConfig()
    shown = set(re.findall(r"^#? ?([a-z_]+) = ", text, re.M))
    for f in msgspec.structs.fields(RunConfig):
        if isinstance(f.default, msgspec.Struct):
            assert f"[{f.name}]" in text
            for sub in msgspec.structs.fields(type(f.default)):
                assert sub.name in shown, f"{f.name}.{sub.name} missing from the generated config"
        else:
            assert f.name in shown, f.name


def test_generated_config_comments_come_from_the_source():
    text = default_config_toml()
    # a trailing comment and a block comment of streamcad/config.py, carried as they are written
    assert re.search(r'^uri = "sweep:" +# the repo\'s BUS-BRA sample images', text, re.M)
    assert re.search(r"^# ORT intra-op threads\..*\n.*\nthreads = 1$", text, re.M)


def _train_flags() -> dict[str, set[str]]:
    from streamcad.train import cli as train_cli

    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))

    def options(p: argparse.ArgumentParser) -> set[str]:  # a command's flags and its own subcommands' (train cv run ...)
        out = {o for a in p._actions for o in a.option_strings}
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for q in a.choices.values():
                    out |= options(q)
        return out

    return {name: options(p) for name, p in sub.choices.items()}


def test_every_flag_in_training_doc_exists():
    flags = _train_flags()
    every = set().union(*flags.values())
    text = (REPO / "docs" / "TRAINING.md").read_text()
    spans = re.findall(r"```.*?```|`[^`\n]+`", text, re.S)
    assert spans
    for span in (line for sp in spans for line in sp.splitlines()):
        if "torchrun" in span:  # torchrun's own flags come before `-m streamcad.cli train ...`
            span = span[span.index("cli train"):] if "cli train" in span else ""
        cmd = re.search(r"(?:streamcad|cli) train ([a-z]+)", span)
        # a flag, not a diagram arrow (`--ssl.pretrain-->`) nor a flag-like word inside a name
        for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)(?![\w.>-])", span):
            if cmd and cmd.group(1) in flags:
                assert flag in flags[cmd.group(1)], f"docs/TRAINING.md: `streamcad train {cmd.group(1)}` has no {flag}"
            else:
                assert flag in every, f"docs/TRAINING.md names {flag}, which no `streamcad train` command has"
        under = re.findall(r"(?<![\w-])(--[a-z][a-z0-9]*_[a-z0-9_]*)(?![\w.>-])", span)  # `--threshold_method`
        assert not under, f"docs/TRAINING.md: {under} (streamcad's flags use dashes)"


def write_readme_block() -> None:
    """Replace README's config block with the generated one (`python -m tests.test_docs_config`)."""
    path = REPO / "README.md"
    text = path.read_text()
    old = _readme_config_block()
    start = text.index(old, text.index("### Config"))
    path.write_text(text[:start] + default_config_toml() + text[start + len(old):])


if __name__ == "__main__":
    write_readme_block()
