"""Root conftest: stays thin. Options, fixtures and hooks live in medqa_core.pytest_plugin."""
pytest_plugins = ["medqa_core.pytest_plugin"]
