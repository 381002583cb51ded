"""Upgrade model manifests to the current schema, or re-seal one whose fields were edited on purpose.

    python -m streamcad.engines.upgrade_manifest engines/models/default.onnx [more.onnx ...]
    python -m streamcad.engines.upgrade_manifest --reseal engines/models/default.onnx   # after an intended edit

Schema 2 adds ``contract_sha256``, a hash over every manifest field that changes scores
(preprocess, class names, operating threshold, temperature, input, the ood gate, ...) together
with the model file's sha256 (streamcad.manifest). The model file must still match the manifest's
size and sha256; whoever runs this vouches for the fields as they stand, so read them first.
`streamcad export` and `streamcad train ship` write schema 2 themselves: no upgrade needed there.
"""

from __future__ import annotations

import argparse
import sys

from streamcad.errors import StreamcadError
from streamcad.manifest import upgrade_manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m streamcad.engines.upgrade_manifest", description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", help="NAME.onnx / NAME.engine / NAME.json")
    p.add_argument("--reseal", action="store_true", help="re-seal a current-schema manifest after an intended edit")
    args = p.parse_args(argv)
    for path in args.models:
        try:
            m = upgrade_manifest(path, reseal=args.reseal)
        except StreamcadError as exc:
            print(f"upgrade_manifest: error: {exc}", file=sys.stderr)
            return 1
        print(f"{path}: schema {m.schema_version}, contract_sha256 {m.contract_sha256}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
