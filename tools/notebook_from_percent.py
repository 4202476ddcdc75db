"""Write a solution notebook from a simple text format (authoring aid).

Cells are separated by lines `# %% [markdown]` or `# %%` (code), as in
jupytext's percent format; tags: `# %% tags=["solution"]`.
    python tools/new_notebook.py src.py solutions/NN_name.ipynb
Then: python -m exercises_lib.generate --execute solutions/NN_name.ipynb
"""
import json
import re
import sys

import nbformat


def parse(text: str):
    cells = []
    kind, tags, buf = None, [], []

    def flush():
        if kind is None:
            return
        src = "\n".join(buf).strip("\n")
        if kind == "markdown":
            src = "\n".join(re.sub(r"^# ?", "", l) for l in src.split("\n"))
            cell = nbformat.v4.new_markdown_cell(src)
        else:
            cell = nbformat.v4.new_code_cell(src)
        if tags:
            cell.metadata["tags"] = tags
        cells.append(cell)

    for line in text.split("\n"):
        m = re.match(r"^# %%( \[markdown\])?(?: tags=(\[.*\]))?\s*$", line)
        if m:
            flush()
            kind = "markdown" if m.group(1) else "code"
            tags = json.loads(m.group(2)) if m.group(2) else []
            buf = []
        else:
            buf.append(line)
    flush()
    return cells


if __name__ == "__main__":
    src, dst = sys.argv[1], sys.argv[2]
    nb = nbformat.v4.new_notebook()
    nb.cells = parse(open(src).read())
    nbformat.write(nb, dst)
    print(f"wrote {dst} ({len(nb.cells)} cells)")
