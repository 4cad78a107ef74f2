"""The proof tools (Polygraphy's comparator and debug tools, for hw2rt's models): every engine against the
torch fp32 reference.

- per call and end to end: `parity.run_parity` (`hw2rt parity`), `parity.per_call`, `parity.end_to_end`
- along a whole trajectory, free and forced: `trajectory.trajectory_report`
- the first diverging node of a graph: `localize.localize`
- the task's own grade (graded digits, classify labels): `task.digit_agreement`, `task.label_agreement`
- the fp16 island search against the image metric: `islands.search_islands`

Imported by module (`from hw2rt.verify.parity import run_parity`): this package imports nothing itself, so
`import hw2rt.verify.task` does not load the other tools.
"""
