"""The option vocabularies: which models, backends and precisions exist. Torch-free, so the CLI's
`--help` stays fast; the registry, the engines, export and the CLI all read these tuples.
"""
MODELS = ("face_unet", "digit_unet", "dann", "digit_classifier")
BACKENDS = ("auto", "torch", "ort", "trt", "openvino")
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "fp8")  # what some engine serves
# what an exported ONNX graph holds (bf16 is an inference precision, not a graph; int8 and fp8 are QDQ graphs)
GRAPH_PRECISIONS = ("fp32", "fp16", "int8", "fp8")
BF16_BACKENDS = ("torch", "openvino")  # bf16 is an inference precision there, not a graph
OPENVINO_PRECISIONS = ("fp32", "bf16", "int8")  # bf16 on the fp32 graph (engines/openvino.py)
QUANTIZED = ("int8", "fp8")  # calibrated on the model's own use; no torch engine
SAMPLERS = ("ancestral", "ddim", "dpmpp-2m", "unipc")  # the digit job's
DEVICES = ("auto", "cpu", "cuda")  # also "cuda:N"

AUTO_BACKEND = ("auto: the fastest measured on this machine: on a CPU by its kind (AMX, AVX512-BF16, AVX2; "
                "rules in engines/auto.py, figures in benchmarks/RESULTS.md), ort where never measured; on "
                "CUDA trt when installed, else ort's CUDA EP, else torch. The command prints its choice.")
