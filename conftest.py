"""Root conftest: stays thin. The plugin (medqa_core.pytest_plugin) is loaded through its pytest11
entry point, and this repository configures it in pyproject.toml ([tool.medqa-bench])."""
