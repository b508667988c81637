"""Command-line options of ``python -m training.train``, and config files (YAML or TOML) as their defaults.

A config file holds the same names as the options (``learning_rate`` or ``learning-rate``); options given on the
command line win over the file.
"""
import argparse
import tomllib
from pathlib import Path


def read_config_file(path: str) -> dict:
    text = Path(path).read_text(encoding="utf-8")
    if path.endswith(".toml"):
        data = tomllib.loads(text)
    else:
        import yaml
        data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError(f"'{path}' must hold a mapping of option names to values")
    return {key.replace("-", "_"): value for key, value in data.items()}


def apply_config_file(parser: argparse.ArgumentParser, argv) -> argparse.Namespace:
    """Parse once for --config, use the file as defaults (unknown names are an error), parse again."""
    first, _ = parser.parse_known_args(argv)
    if getattr(first, "config", None):
        values = read_config_file(first.config)
        known = {action.dest for action in parser._actions}
        unknown = sorted(set(values) - known)
        if unknown:
            parser.error(f"unknown option(s) in {first.config}: {', '.join(unknown)}")
        parser.set_defaults(**values)
    return parser.parse_args(argv)
