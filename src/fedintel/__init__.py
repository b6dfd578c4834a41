"""fedintel: federated intelligence at the network edge.

Federated parameter-efficient fine-tuning (LoRA, prefix tuning, prompt tuning through Hugging Face PEFT)
of real pretrained language models across simulated edge devices, with a wireless network model,
and collaborative inference across devices.
"""

__version__ = "0.1.0"

import logging as _logging

# bitsandbytes warns on import, on every CPU with AVX512-BF16, that an optional kernels package is missing.
# fedintel turns that CPU path off (models/loader.py), so the warning only alarms users; keep its errors.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)
