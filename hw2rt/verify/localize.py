"""Localize a parity failure: the first node of the candidate ONNX graph whose output diverges.

Polygraphy's `--mark all` comparison, for hw2rt's exports. Every matched intermediate tensor of the
candidate graph and of the fp32 reference graph is made a graph output (on the in-memory ModelProto,
restored afterwards; ONNX Runtime infers the added outputs' types), both graphs run once on ONNX Runtime's
CPU provider with graph optimizations off (ORT_DISABLE_ALL, so no node is fused or renamed away), and
each pair is compared in float64 in the candidate's node order (ONNX nodes are topologically sorted).
Relative error is max abs error / max |reference| (parity's "required_rtol"); a tensor is over budget when
that exceeds `rel_budget`, or when the candidate holds a NaN/Inf where the reference does not (max_abs
inf). Identical non-finite values in both are not errors.

Which tensors correspond (measured on the TorchScript exporter's fp32 and fp16 exports):

- Nodes are named by module scope and op, `{scope}/{Op}` plus `_k` for the k-th repeat of that exact
  name (`/down2/resblocks/conv1/Conv`, `/down11/resblocks/Add_1`; unscoped `Identity_385`, the exporter's
  copies of shared initializers, are numbered graph-wide and match verbatim). The fp16
  export traces `Fp16Network(net)`, so every scope gains a `/net` prefix: fp32 `/time/time.0/Sin` is
  fp16 `/net/time/time.0/Sin`. The prefix is found, not assumed: per side the most common first scope
  component is tried against none, and the pairing with the most (name, op type) matches wins. Nodes
  outside the prefix (the fp16 graph's edge Casts `/Cast`, `/Cast_1`) match no reference node.
- The fp16 converter adds only Casts, and since the `_k` counters are per exact name, they shift only the
  numbering of other Casts in the same scope (`/net/down2/resblocks/Cast_1` is a GroupNorm upcast with no
  fp32 counterpart). So a node matches the reference node of the same prefix-free name and op type, and
  its outputs match by position (same output count), except Cast nodes in a scope whose Cast count
  differs between the graphs: those are skipped (counted as unmatched; `/net/time/time.0/Cast`, alone in
  its scope in both, does match). Candidate graph outputs match
  the reference graph outputs of the same name (the I/O contract is the same at both precisions).
- For fp32 candidates (same exporter, e.g. perturbed weights) every name matches 1:1.

Constant nodes (data, not computation) are not compared. Only floating tensors are compared: integer
and bool tensors (shapes, indices) are left out of both `nodes` and the counts. `unmatched` counts the
candidate's floating node outputs with no reference counterpart (skipped Casts included), and tensors
whose shapes differ from their counterpart's.

The budget is per tensor, and an interior tensor can legitimately need more than the graph outputs:
GroupNorm over few values amplifies its input's rounding by max |x| / (a group's std). Measured, fp16 vs
fp32: the random SMALL face UNet (32 groups) at 32x32 has 1x1 mid blocks, 4 values a group, and its mid
GroupNorms reach rel 2-10e-2 while `eps` is at 1e-3; at 64x64 every node stays under 5e-3, and the
bundled face UNet (8 groups) under 2e-3 at 32x32. Memory: the tensors are fetched `chunk` at a time
(each fetch reruns the graph up to them), so memory stays at a chunk's activations of both graphs,
not all of them (1,700 tensors of the assignment's face UNet at 256x256 would be ~56 GB a graph).
"""
import math
from collections import Counter

import numpy as np
import onnx

from hw2rt.errors import Hw2rtError


def _load(model) -> tuple:
    if isinstance(model, onnx.ModelProto):
        return model, f"<ModelProto {model.graph.name}>"
    return onnx.load(str(model)), str(model)


def _prefix(nodes) -> str:
    """The most common first scope component of the scoped node names, e.g. "/net"; "" if none."""
    firsts = Counter("/" + n.name.split("/")[1] for n in nodes if n.name.count("/") >= 2)
    return firsts.most_common(1)[0][0] if firsts else ""


def _keys(nodes, prefix: str) -> dict:
    """{(name without prefix, op): node} for the nodes inside `prefix`, Constants excluded."""
    out = {}
    for n in nodes:
        name = n.name or (n.output[0] if n.output else "")
        if n.op_type == "Constant" or (prefix and "/" in name and not name.startswith(prefix + "/")):
            continue
        out[name[len(prefix):] if "/" in name else name, n.op_type] = n
    return out


def _cast_counts(keys: dict) -> Counter:
    return Counter(name.rsplit("/", 1)[0] for name, op in keys if op == "Cast")


def match_tensors(candidate: onnx.ModelProto, reference: onnx.ModelProto) -> dict:
    """{candidate tensor name: reference tensor name} for corresponding node outputs (see the docstring)."""
    cn, rn = list(candidate.graph.node), list(reference.graph.node)
    pairs = [(pc, pr) for pc in ("", _prefix(cn)) for pr in ("", _prefix(rn))]
    pc, pr = max(pairs, key=lambda p: len(_keys(cn, p[0]).keys() & _keys(rn, p[1]).keys()))
    ck, rk = _keys(cn, pc), _keys(rn, pr)
    cc, rc = _cast_counts(ck), _cast_counts(rk)
    mapping = {}
    for key, node in ck.items():
        ref = rk.get(key)
        if ref is None or len(ref.output) != len(node.output):
            continue
        if key[1] == "Cast" and cc[key[0].rsplit("/", 1)[0]] != rc[key[0].rsplit("/", 1)[0]]:
            continue
        mapping.update((c, r) for c, r in zip(node.output, ref.output) if c and r)
    ref_outputs = {o.name for o in reference.graph.output}
    mapping.update((o.name, o.name) for o in candidate.graph.output if o.name in ref_outputs)
    return mapping


class _Session:
    """`model` on ONNX Runtime's CPU provider, optimizations off, with the tensors `expose` added as graph
    outputs; `fetch(names)` runs it for those (ORT computes only what they need)."""

    def __init__(self, model: onnx.ModelProto, feeds: dict, expose: list, threads: int | None):
        import onnxruntime as ort

        graph = model.graph
        n0, present = len(graph.output), {o.name for o in graph.output}
        graph.output.extend(onnx.ValueInfoProto(name=n) for n in expose if n not in present)
        try:
            blob = model.SerializeToString()
        finally:
            del graph.output[n0:]
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.intra_op_num_threads = int(threads or 0)
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        self.sess = ort.InferenceSession(blob, so, providers=["CPUExecutionProvider"])
        self.types = {o.name: o.type for o in self.sess.get_outputs()}
        missing = [i.name for i in self.sess.get_inputs() if i.name not in feeds]
        if missing:
            raise Hw2rtError(f"localize: no feed for the graph input(s) {', '.join(missing)}")
        self.inputs = {i.name: _numpy(feeds[i.name]) for i in self.sess.get_inputs()}

    def floating(self, names) -> list:
        return [n for n in names if "float" in self.types.get(n, "")]

    def fetch(self, names: list) -> dict:
        return dict(zip(names, self.sess.run(names, self.inputs)))


class _OpenVinoSession:
    """The candidate graph as `engine` (an OpenVinoEngine) compiles it: its inference precision, fp32 islands
    (the graph marked, and rewritten where the marking rewrites it, as the engine's) and threads, with the
    tensors of one fetch made outputs (a compile per fetch). A tensor the rewrites removed (the first of two
    Unsqueezes merged into one Reshape) is not compared. Exposing a tensor stops the plugin fusing through
    it, and under bf16 the plugin keeps a graph output's producers back to the last convolution/matmul in
    fp32: the bf16 figures are of convolutions and matmuls in bf16 with what lies between them in fp32, an
    approximation of the engine's run."""

    def __init__(self, engine, feeds: dict, threads: int | None):
        import tempfile

        self.engine = engine
        with tempfile.TemporaryDirectory(prefix="hw2rt-localize-") as work:
            model = self._marked(work)
            self.types = {n: out.get_element_type().get_type_name() for op in model.get_ops()
                          for out in op.outputs() for n in out.get_names()}
            missing = [p.get_any_name() for p in model.inputs if p.get_any_name() not in feeds]
            if missing:
                raise Hw2rtError(f"localize: no feed for the graph input(s) {', '.join(missing)}")
            self.inputs = {p.get_any_name(): _numpy(feeds[p.get_any_name()]) for p in model.inputs}

    def _marked(self, work):
        """The engine's graph as it compiles it (read from `work`'s IR files while they exist)."""
        from pathlib import Path

        from hw2rt.engines.openvino import core
        from hw2rt.engines.openvino_islands import mark_islands

        graph = core().read_model(str(self.engine.path))
        return mark_islands(graph, self.engine.model, self.engine.islands, Path(work), core())[0]

    def floating(self, names) -> list:
        return [n for n in names if self.types.get(n, "") in ("f32", "f16", "bf16")]

    def fetch(self, names: list) -> dict:
        import tempfile

        from hw2rt.engines.openvino import core

        with tempfile.TemporaryDirectory(prefix="hw2rt-localize-") as work:
            model = self._marked(work)
            model.add_outputs(names)
            compiled = core().compile_model(model, "CPU", self.engine.config)
        request = compiled.create_infer_request()
        request.infer(self.inputs)
        return {n: np.array(request.get_tensor(n).data) for n in names}


def _numpy(v) -> np.ndarray:
    return v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)


def compare_tensor(cand: np.ndarray, ref: np.ndarray, rel_budget: float) -> dict:
    """max_abs, rel (max_abs / max |ref|) and over, in float64; a differing NaN/Inf gives max_abs inf."""
    c, r = cand.astype(np.float64), ref.astype(np.float64)
    with np.errstate(invalid="ignore"):
        same = (c == r) | (np.isnan(c) & np.isnan(r))
        d = np.where(same, 0.0, np.abs(c - r))
    finite_r = r[np.isfinite(r)]
    scale = float(np.abs(finite_r).max()) if finite_r.size else 0.0
    max_abs = float(d.max()) if d.size and np.isfinite(d).all() else (math.inf if d.size else 0.0)
    rel = max_abs / scale if scale > 0 else max_abs
    return {"max_abs": max_abs, "rel": rel, "over": not max_abs <= rel_budget * max(scale, 1e-12)}


def localize(candidate, reference, feeds: dict, *, rel_budget: float, threads: int | None = None,
             chunk: int = 64, engine=None) -> dict:
    """candidate, reference: paths or onnx.ModelProto; feeds: {input name: torch tensor or numpy}.
    `chunk`: how many tensors of each graph are fetched per run (memory; each run recomputes what they need).
    `engine`: an OpenVinoEngine of the candidate graph: its tensors as OpenVINO computes them (its precision,
    islands and threads; `_OpenVinoSession`) instead of ONNX Runtime's, unoptimized.

    Returns {"candidate", "reference", "budget_rel", "compared", "unmatched",
    "first_divergent": {"node", "op", "output", "max_abs", "rel"} or None,
    "nodes": [{"node", "op", "output", "max_abs", "rel", "over"}, ...]} in the candidate's node order."""
    cand, cand_name = _load(candidate)
    ref, ref_name = _load(reference)
    mapping = match_tensors(cand, ref)
    computed = [o for n in cand.graph.node if n.op_type != "Constant" for o in n.output if o]
    cand_sess = _OpenVinoSession(engine, feeds, threads) if engine is not None else _Session(
        cand, feeds, computed, threads)
    floating = cand_sess.floating(computed)
    matched = [o for o in floating if o in mapping]
    ref_sess = _Session(ref, feeds, list(dict.fromkeys(mapping[o] for o in matched)), threads)
    matched = [o for o in matched if mapping[o] in ref_sess.floating([mapping[o]])]
    unmatched = len(floating) - len(matched)
    results = {}
    for i in range(0, len(matched), chunk):  # bounded memory: `chunk` tensors of each graph at a time
        names = matched[i:i + chunk]
        c_out, r_out = cand_sess.fetch(names), ref_sess.fetch([mapping[o] for o in names])
        for o in names:
            c, r = c_out[o], r_out[mapping[o]]
            results[o] = compare_tensor(c, r, rel_budget) if c.shape == r.shape else None
        del c_out, r_out
    rows = []
    for node in cand.graph.node:
        for out in (o for o in node.output if o in results):
            if results[out] is None:  # another shape there
                unmatched += 1
                continue
            rows.append({"node": node.name, "op": node.op_type, "output": out, **results[out]})
    over = [row for row in rows if row["over"]]
    first = {k: over[0][k] for k in ("node", "op", "output", "max_abs", "rel")} if over else None
    return {"candidate": cand_name, "reference": ref_name, "budget_rel": rel_budget, "compared": len(rows),
            "unmatched": unmatched, "first_divergent": first, "nodes": rows}


def _g(v: float) -> str:
    return "inf" if v == math.inf else f"{v:.3g}"


def format_localize(report: dict, limit: int = 20) -> str:
    """A Polygraphy-like markdown table (node | op | max abs | rel | mark) under a head line naming the
    first divergent node. Over `limit` rows: those around the first divergent node and the worst ones."""
    rows, first = report["nodes"], report["first_divergent"]
    i0 = next((i for i, r in enumerate(rows) if r["over"]), None)
    counts = f"({report['compared']} tensors compared, {report['unmatched']} unmatched)"
    if first is None:
        head = f"localize: no node over the relative budget {report['budget_rel']:g} {counts}"
    else:
        head = (f"localize: first divergent node {first['node']} ({first['op']}): max abs "
                f"{_g(first['max_abs'])}, rel {_g(first['rel'])} > budget {report['budget_rel']:g} {counts}")
    shown = set(range(len(rows)))
    if len(rows) > limit:
        around = range(max(0, (i0 or 0) - limit // 4), min(len(rows), (i0 or 0) + limit // 4 + 1))
        worst = sorted(range(len(rows)), key=lambda i: -rows[i]["rel"])[:limit - len(around)]
        shown = set(around) | set(worst)
    lines = [head, "", "| node | op | max abs | rel | mark |", "|---|---|---|---|---|"]
    last = -1
    for i in sorted(shown):
        if i > last + 1:
            lines.append(f"| ... {i - last - 1} rows ... | | | | |")
        r = rows[i]
        mark = "<- first over budget" if i == i0 else ("FAIL" if r["over"] else "")
        lines.append(f"| {r['node']} | {r['op']} | {_g(r['max_abs'])} | {_g(r['rel'])} | {mark} |")
        last = i
    if rows and last < len(rows) - 1:
        lines.append(f"| ... {len(rows) - 1 - last} rows ... | | | | |")
    return "\n".join(lines)
