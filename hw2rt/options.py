"""The option vocabularies: which models, backends and precisions exist. Torch-free, so the CLI's
`--help` stays fast; the registry, the engines, export and the CLI all read these tuples.
"""
MODELS = ("face_unet", "digit_unet", "dann", "digit_classifier")
BACKENDS = ("auto", "torch", "ort", "trt", "openvino")
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "fp8")  # what some engine serves
# what an exported ONNX graph holds (int8 and fp8 are QDQ graphs); bf16 is no graph: torch runs it, and
# openvino runs the fp32 graph in it (OPENVINO_PRECISIONS)
GRAPH_PRECISIONS = ("fp32", "fp16", "int8", "fp8")
OPENVINO_PRECISIONS = ("fp32", "bf16", "int8")
QUANTIZED = ("int8", "fp8")  # calibrated on the model's own use; no torch engine
SAMPLERS = ("ancestral", "ddim", "dpmpp-2m", "unipc")  # the digit job's
DEVICES = ("auto", "cpu", "cuda")  # also "cuda:N"

AUTO_BACKEND = ("auto: the fastest backend available: trt on a CUDA GPU with TensorRT installed, else ort "
                "(the CPU, or its CUDA EP with onnxruntime-gpu); torch for bf16. On a CPU-only install: ort.")
