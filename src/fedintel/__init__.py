"""fedintel: federated intelligence at the network edge.

Federated parameter-efficient fine-tuning (LoRA, prefix tuning, prompt tuning through Hugging Face PEFT)
of real pretrained language models across simulated edge devices, with a wireless network model,
and collaborative inference across devices.
"""

__version__ = "0.1.0"
