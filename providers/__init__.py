"""Provider stages: one module per provider, each building a pipecat service."""
