"""The inference engine: paged KV cache, scheduler and the one batched step every caller uses."""
