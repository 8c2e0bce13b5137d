"""The simulator's parts: a trace, a provider model, the virtual-clock run of ``decide()``, the
baselines it is compared with, and the report. ``controller.simulate`` puts them together."""
