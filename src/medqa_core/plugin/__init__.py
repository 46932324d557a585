"""The pytest plugin's parts, one concern each; ``medqa_core.pytest_plugin`` (the ``pytest11``
entry point) holds the hooks and fixtures and delegates here:

- :mod:`.state`: what one run carries between hooks (:class:`~.state.RunState`), the profile as
  the run reads it, where its cache, history and ``run.toml`` are;
- :mod:`.options`: the command-line options, GPU pinning of xdist workers, the configured
  profile and the usage checks that stop a bad run at its start;
- :mod:`.records`: the case records a run gathers (xdist workers included) and whether it judged
  anything;
- :mod:`.finish`: the post-run chain: baselines or aggregates, summary, ``run.toml``, history,
  trends, alert.

Nothing here imports torch; everything is post-run code for the cache key (``cache.POST_RUN_PACKAGES``).
"""
