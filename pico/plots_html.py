"""An offline HTML template for `dvc plots show/diff`.

DVC's default page loads vega, vega-lite and vega-embed from a CDN and renders blank without network. This
template inlines them (from vl-convert-python's bundle) instead; `.dvc/config` points
`plots.html_template` at it and `make setup` writes it: `python -m pico.plots_html .dvc/plots_template.html`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pico.io import write_text

# `{plot_divs}` is DVC's placeholder; `{scripts}` (the CDN tags) is deliberately absent
TEMPLATE_HEAD = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {refresh_tag}
    <title>DVC plots (offline)</title>
    <script>
"""
TEMPLATE_TAIL = """
    </script>
    <style>
        body { font-family: system-ui, sans-serif; }
        table { border-spacing: 15px; }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def template() -> str:
    import vl_convert

    bundle = vl_convert.javascript_bundle()
    if "</script" in bundle:  # would end the inline script early
        bundle = bundle.replace("</script", "<\\/script")
    return TEMPLATE_HEAD + bundle + TEMPLATE_TAIL


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0] if args else ".dvc/plots_template.html")
    write_text(out, template())
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
