"""GPU serving benchmark for issue #6: this app (``serve run``) vs ``vllm serve`` on the same GPU,
model, engine arguments and load. See bench/README.md, section "GPU serving benchmark".

Modules: ``make_checkpoint`` (random-weight Qwen2.5-VL checkpoints with real shapes), ``workloads``
(pre-generated request payloads), ``loadgen`` (async closed-loop OpenAI streaming client),
``metrics`` (pure statistics), ``coldstart`` (vLLM start-up log parsing), ``servers`` (launching and
stopping both servers), ``bandwidth`` (device copy bandwidth and the decode bound), ``report``
(tables), ``harness`` (the phases).
"""
