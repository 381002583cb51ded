"""Two exported models behind one input: one model's classifier, the other's gate embedding.

    CLASSIFIER.onnx (+ .json)   GATE_MODEL.onnx (+ .json, with an out-of-domain gate)
      --onnx.compose.add_prefix('gate/') on the gate model; its input wired to the classifier's
        input; both node lists and initializers in one graph-->
      OUT.onnx: logits, saliency from the classifier; embedding from the gate model
      OUT.json: the classifier's manifest (threshold, temperature, metrics, training data), the
        gate model's `ood`, and `source` naming both parents by sha256

Why: a classifier whose own embedding gates badly (lever 5's candidate, docs/TRAINING.md) can
keep the gate of a model whose embedding gates well. Both backbones run on every frame (about
twice the FLOPs); benchmarks.compose_latency measures what that costs.

    python -m streamcad.engines.compose CLASSIFIER.onnx GATE_MODEL.onnx --out OUT.onnx
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from streamcad.errors import ArtifactError

__all__ = ["compose", "main"]

log = logging.getLogger(__name__)

PREFIX = "gate/"


def _check_pair(clf, gate) -> None:
    if [(o.domain, o.version) for o in clf.opset_import] != [(o.domain, o.version) for o in gate.opset_import]:
        raise ArtifactError(f"opsets differ: classifier {[o.version for o in clf.opset_import]}, "
                            f"gate model {[o.version for o in gate.opset_import]}; expected the same exporter's")
    ci, gi = clf.graph.input, gate.graph.input
    if len(ci) != 1 or len(gi) != 1:
        raise ArtifactError(f"inputs: classifier {len(ci)}, gate model {len(gi)}; expected one each")
    if ci[0].type != gi[0].type:
        raise ArtifactError(f"input types differ: {ci[0].type} vs {gi[0].type}; expected the same (N, 1, S, S) input")
    for name, g, need in (("classifier", clf, ("logits", "saliency")), ("gate model", gate, ("embedding",))):
        have = [o.name for o in g.graph.output]
        if not set(need) <= set(have):
            raise ArtifactError(f"{name} outputs {have}; expected {', '.join(need)}")


def _prune(graph) -> None:
    """Drop the nodes and initializers no graph output depends on (the classifier's embedding)."""
    need = {o.name for o in graph.output}
    kept = []
    for node in reversed(graph.node):
        if any(x in need for x in node.output):
            kept.append(node)
            need.update(x for x in node.input if x)
    kept.reverse()
    del graph.node[:]
    graph.node.extend(kept)
    inits = [t for t in graph.initializer if t.name in need]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    vis = [v for v in graph.value_info if v.name in need]
    del graph.value_info[:]
    graph.value_info.extend(vis)


def compose(classifier: str | Path, gate_model: str | Path, out: str | Path) -> Path:
    """-> OUT.onnx + OUT.json (module docstring). Both parents are verified against their
    manifests; the two must share opset, input shape and preprocessing."""
    import onnx
    from onnx import compose as oc
    from onnx import helper

    from streamcad.manifest import read_manifest, verify_artifact, write_manifest

    classifier, gate_model, out = Path(classifier), Path(gate_model), Path(out)
    mc, mg = read_manifest(classifier), read_manifest(gate_model)
    verify_artifact(classifier, mc)
    verify_artifact(gate_model, mg)
    if not mg.ood:
        raise ArtifactError(f"{gate_model.name} carries no out-of-domain gate; expected a gate model with one")
    if mc.preprocess != mg.preprocess:
        raise ArtifactError(f"preprocessing differs: {mc.preprocess} vs {mg.preprocess}; expected the same input")
    clf, gate = onnx.load(str(classifier)), onnx.load(str(gate_model))
    _check_pair(clf, gate)
    inp = clf.graph.input[0].name
    gate = oc.add_prefix(gate, PREFIX)
    g_in = gate.graph.input[0].name
    for node in gate.graph.node:  # the gate model reads the classifier's input
        node.input[:] = [inp if x == g_in else x for x in node.input]
    graph = clf.graph
    for node in graph.node:  # the classifier's own embedding is no output any more (pruned below)
        node.output[:] = ["classifier/embedding" if x == "embedding" else x for x in node.output]
    keep = [o for o in graph.output if o.name != "embedding"]
    emb = next(o for o in gate.graph.output if o.name == PREFIX + "embedding")
    graph.node.extend(gate.graph.node)
    graph.node.append(helper.make_node("Identity", [emb.name], ["embedding"], name="gate_embedding"))
    graph.initializer.extend(gate.graph.initializer)
    graph.value_info.extend(gate.graph.value_info)
    out_emb = onnx.ValueInfoProto()
    out_emb.CopyFrom(emb)
    out_emb.name = "embedding"
    del graph.output[:]
    graph.output.extend([*keep, out_emb])
    _prune(graph)
    onnx.checker.check_model(clf)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(clf, str(out))
    d = mc.to_fields()
    for k in ("created", "git_commit", "outputs"):  # this graph's own, filled in by write_manifest
        d.pop(k)
    d["ood"] = mg.ood
    d["source"] = {"classifier": {"file": classifier.name, "sha256": mc.sha256},
                   "gate_model": {"file": gate_model.name, "sha256": mg.sha256},
                   "composed": "logits and saliency from the classifier, embedding (the gate's input) from the gate model"}
    m = write_manifest(out, **d)
    log.info("compose: wrote %s (%s) from %s + %s", out, m.sha256[:12], classifier.name, gate_model.name)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("classifier", type=Path, help="exported model whose logits and lesion map are used")
    p.add_argument("gate_model", type=Path, help="exported model whose embedding and gate are used")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(compose(args.classifier, args.gate_model, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
