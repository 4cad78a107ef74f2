"""`hw2rt bench`: one benchmark harness. Every runner side by side (runners), on the same inputs and
the jobs' own loops (scenarios, loops), measured one way (measure), reported one way (report); the suites
(cpu, quick, gpu, cpu-smoke) are sizes and runner lists over the same code (suites). The GPU check,
`benchmarks/gpu_check.sh`, is the gpu suite; its device checks (gpu_checks) are plain functions that
tests/gpu also runs.
"""
