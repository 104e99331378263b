"""The consumer: the SQS receive loop, jobs and their verdicts, per-owner shares, the process's
wiring (`service`) and the Lambda runtime.

May import: `config`, `pipeline.core`, `pipeline.imaging`, `pipeline.webhooks`, `pipeline.backends`
(and `pipeline.aws` in the Lambda runtime, which is AWS by definition).
"""
