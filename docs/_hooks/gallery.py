"""MkDocs hook (no plugin): the gallery shows what `make figures` wrote to figures/, when it is there.

Figures are build outputs, not committed: without figures/ the gallery says how to make them, and the strict
build still passes. With it, every PNG under figures/ is copied into the site and listed with its entry in
figures/manifest.json (script, seconds, headline numbers) when the manifest names it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

MARKER = "<!-- figures -->"


def _figures_dir(config: Any) -> Path:
    return Path(config["config_file_path"]).parent / "figures"


def _pngs(config: Any) -> list[Path]:
    root = _figures_dir(config)
    return sorted(root.rglob("*.png")) if root.is_dir() else []


def _manifest(config: Any) -> list[dict]:
    path = _figures_dir(config) / "manifest.json"
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    entries = data.get("figures", data) if isinstance(data, dict) else data
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


def on_files(files: Files, config: Any) -> Files:
    root = _figures_dir(config)
    for png in _pngs(config):
        files.append(File.generated(config, f"figures/{png.relative_to(root).as_posix()}", abs_src_path=str(png)))
    return files


def _caption(relative: str, manifest: list[dict]) -> str:
    for entry in manifest:
        if str(entry.get("figure", "")).endswith(relative) or relative.endswith(str(entry.get("figure", "?"))):
            details = {k: v for k, v in entry.items() if k != "figure"}
            return "`" + json.dumps(details, default=str)[:400] + "`"
    return ""


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    if page.file.src_uri != "gallery.md" or MARKER not in markdown:
        return markdown
    root = _figures_dir(config)
    pngs = _pngs(config)
    if not pngs:
        listing = ('!!! note "No figures built yet"\n    Run `make figures` (or `make figures QUICK=1`), then '
                   "`make docs`: every figure under `figures/` appears here with its manifest entry.")
    else:
        manifest = _manifest(config)
        blocks = []
        for png in pngs:
            relative = png.relative_to(root).as_posix()
            blocks.append(f"### `{relative}`\n\n![{relative}](figures/{relative})\n\n{_caption(relative, manifest)}")
        listing = "\n\n".join(blocks)
    return markdown.replace(MARKER, listing)
