"""The pages that show every app: the developer portal (/portal/) and the staff dashboard (/staff/).

The top layer: it reads and writes through accounts, billing and completions
(their services and selectors); none of them imports it (pyproject.toml's
import-linter contract).
"""
