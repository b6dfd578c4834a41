"""Collaborative inference across devices (paper section IV), each device a real OS process.

Modules (import what you use; nothing heavy is imported here):

``protocol``     length-prefixed frames over mutual TLS (``LinkSecurity``; sequence numbers, size limits, raw tensors, no pickle)
``worker``       the device process: serves a model, a slice of one, or a local classifier
``launcher``     start device processes on this machine and never leave one behind
``stage``        a contiguous slice of a decoder; ``IncrementalLM``; greedy decoding; int8 drafts
``planner``      where to cut the model: DP over layers and devices (= brute force on small cases)
``split``        ``SplitPipeline``: the stages as a chain of processes with a KV cache on each
``speculative``  small draft here, large model there, output identical to the large model's greedy
``cascade``      small model first, escalate when unsure
``experts``      route subtasks to expert devices (embedding similarity or the experts' loss)
``analytics``    devices answer with their own models; only probabilities or votes leave them
``multiaccess``  several paths, a policy, failover without losing requests; fault-injecting relay
``simulate``     the same modes' latency on configured devices and links
``modes``       each ``fedintel infer`` mode as ``run(cfg) -> report``
``config``/``cli``  ``fedintel infer``: its YAML file and the command (parse, run, print)
"""
