"""Explorers: how long each ipywidgets explorer takes to answer a change, by calling its update function.

The course holds every explorer to 0.5 s per change on 2 CPU cores. For each explorer this script builds
what its chapter builds before showing it (the solution notebook's arguments, computed with the library's
functions), builds the explorer (it draws its figure once), then times its update function for a sequence
of changes of each control and prints the build time, the median and the slowest change, with the
machine's load average (a busy machine slows every change). Run with::

    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_explorers.py [--device cpu] [--repeat 3] [--chapters 0 3]

Explorers timed (``box.update`` is what a change of a control runs):

* chapter 0: the head slider of ``solutions/00_setup_check.ipynb``, a notebook-local ``show_head`` whose
  whole work is one :func:`exercises_lib.plotting.imshow` call; that call is timed, with the cell's arguments;
* chapter 1: ``exercises_lib.duplicate_tokens.duplicate_neuron_explorer`` (neuron, position);
* chapter 2: ``exercises_lib.contextual_explorer.neuron_explorer`` (neuron, text; its texts are run
  through layer 0 when it is built, timed separately);
* chapter 3: ``exercises_lib.polysemantic_plots.head_explorer`` on attn-only-4l (code, position);
* chapter 4: ``exercises_lib.duality.duality_explorer`` (pair, template, which word first; every prompt
  is run through the model when it is built);
* chapter 5: ``exercises_lib.patching_choices.direction_explorer`` (experiment, view).

Outside a kernel ``display`` and ``fig.show()`` would print a repr or open a browser; here they do what a
kernel does with a figure: the course's renderer (:func:`exercises_lib.render.configure_renderers`) builds
the output (the plotly JSON and its HTML fallback) and the output is serialised to JSON, so a change's time
is the update's computation, the figure and its serialisation. Widgets' messages are not sent.
"""

from __future__ import annotations

import json
import os
import statistics

import torch

from benchlib import parser, timed

LIMIT_S = 0.5
CHAPTERS = (0, 1, 2, 3, 4, 5)


def kernel_like_display() -> None:
    """Replace ``IPython.display.display`` (which ``fig.show()`` and the explorers call) by what a kernel does
    with the object: its output bundle from the course's renderer, serialised to JSON. An Output widget's
    ``clear_output`` (a message in a kernel, a terminal escape on stdout outside one) does nothing."""
    import IPython.display
    import ipywidgets.widgets.interaction
    import ipywidgets.widgets.widget_output

    from exercises_lib.render import configure_renderers

    configure_renderers()

    def display(obj, *args, raw: bool = False, **kwargs) -> None:
        if raw:
            bundle = obj
        elif hasattr(obj, "_repr_mimebundle_"):
            bundle = obj._repr_mimebundle_()
        else:
            bundle = {"text/plain": repr(obj)}
        json.dumps(bundle)

    IPython.display.display = display
    for module in (ipywidgets.widgets.widget_output, ipywidgets.widgets.interaction):
        module.clear_output = lambda *args, **kwargs: None


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def time_changes(device: str, update, changes: list[tuple]) -> list[float]:
    """Wall time of ``update(*change)`` for each change."""
    return [timed(lambda: update(*change), device)[1] for change in changes]


def report(rows: list, explorer: str, controls: str, build_s: float, times: list[float]) -> None:
    med, worst = statistics.median(times), max(times)
    verdict = "within" if worst <= LIMIT_S else "OVER"
    print(f"  built and first drawn in {build_s:.2f} s; {len(times)} changes ({controls}): median {med:.3f} s, "
          f"slowest {worst:.3f} s ({verdict} the {LIMIT_S} s limit); load average {loadavg()}")
    rows.append((explorer, controls, len(times), build_s, med, worst, verdict, os.getloadavg()[0]))


def chapter0(model, device: str, repeat: int, rows: list) -> None:
    from exercises_lib.plotting import imshow

    prompt_tokens = model.to_tokens(" I have two hands, my right hand and my")
    _, cache = model.run_with_cache(prompt_tokens, names_filter="blocks.0.attn.hook_pattern")
    prompt_pattern = cache["blocks.0.attn.hook_pattern"][0]  # [head, dest, src]

    def show_head(head: int) -> None:  # the cell's imshow call
        imshow(
            prompt_pattern[head], model=model, centred=False, color_continuous_scale="Blues",
            x=model.to_str_tokens(prompt_tokens[0]), y=model.to_str_tokens(prompt_tokens[0]),
            title=f"Attention of head 0.{head}", labels={"x": "source", "y": "destination"}, height=420,
        )

    print("chapter 0 head slider (the cell's imshow call)")
    _, build_s = timed(lambda: show_head(3), device)
    changes = [(h,) for _ in range(repeat) for h in range(model.cfg.n_heads)]
    report(rows, "ch. 0 head slider (`imshow` of the cell)", "head", build_s, time_changes(device, show_head, changes))


def chapter1(model, device: str, repeat: int, rows: list) -> None:
    from exercises_lib import duplicate_tokens as dt

    genesis = dt.text_tokens(model, "bible_genesis", max_len=1024)
    cache = dt.run_layer0(model, genesis)
    pattern = cache["blocks.0.attn.hook_pattern"]
    found = dt.duplicate_token_score(pattern, genesis).topk(3).indices.tolist()
    ratio = dt.copy_to_self_ratio(pattern, genesis, bins=(1, 25, 50, 100, 200, 400, 1024))
    uniform_dup = max(found[:2], key=lambda h: float(ratio[h, -2]))
    top_neurons = dt.outlier_neurons(dt.pvo_contributions(model, uniform_dup).norm(dim=0), factor=8.0)
    far_heads = dt.long_range_heads(dt.mean_attention_distance(pattern))
    uniform_heads = [h for h in far_heads if h != uniform_dup]
    s1_typ = float(dt.layer0_ln_scale(model, genesis)[0].median())
    s2_typ = float((1 / cache["blocks.0.ln2.hook_scale"][0, :, 0]).median())

    print(f"chapter 1 duplicate-neuron explorer (head 0.{uniform_dup}, {len(top_neurons)} neurons)")
    box, build_s = timed(lambda: dt.duplicate_neuron_explorer(
        model, top_neurons, uniform_dup, uniform_heads, ln2_scale=s2_typ, ln1_scale=s1_typ), device)
    n = top_neurons
    one = [(n[1 % len(n)], 600), (n[1 % len(n)], 1000), (n[2 % len(n)], 1000), (n[2 % len(n)], 50),
           (n[0], 300), (n[0], 600)]
    changes = [c for _ in range(repeat) for c in one]
    report(rows, "ch. 1 `duplicate_neuron_explorer`", "neuron, position", build_s,
           time_changes(device, box.update, changes))


def chapter2(model, device: str, repeat: int, rows: list) -> None:
    from exercises_lib import contextual as cx
    from exercises_lib.contextual_explorer import DEFAULT_PAIRS, neuron_explorer
    from exercises_lib.texts import load_text

    heads = [0, 2, 6, 8, 9]
    approx = cx.fit_layer0_approximation(model, cx.tokens_of(model, load_text("british_prose"), 800), heads)
    ext = cx.extended_embeddings(model, heads, approx.Z_median[heads])
    ext[model.tokenizer.eos_token_id] = 0.0
    pairs = list(DEFAULT_PAIRS)
    print(f"chapter 2 neuron explorer ({len(pairs)} texts through layer 0 when built)")
    box, build_s = timed(lambda: neuron_explorer(model, ext, approx, [1710, 300, 704, 1621]), device)
    changes = [(n, p) for _ in range(repeat) for n, p in
               [("300", pairs[0]), ("704", pairs[1]), ("1621", pairs[2]), ("5", pairs[3]), ("1710", pairs[0])]]
    report(rows, "ch. 2 `neuron_explorer`", "neuron, text", build_s, time_changes(device, box.update, changes))


def chapter3(model, device: str, repeat: int, rows: list) -> None:
    from exercises_lib.polysemantic_plots import DEFAULT_CODE, head_explorer

    print("chapter 3 head explorer (head 1.4)")
    box, build_s = timed(lambda: head_explorer(model, 1, 4), device)
    last = model.to_tokens(DEFAULT_CODE).shape[1] - 1
    typed = DEFAULT_CODE + "("  # one more keystroke
    one = [(DEFAULT_CODE, 5), (DEFAULT_CODE, last // 2), (typed, last // 2), (typed, last + 1),
           (DEFAULT_CODE[: len(DEFAULT_CODE) // 2], 10), (DEFAULT_CODE, last)]
    changes = [c for _ in range(repeat) for c in one]
    report(rows, "ch. 3 `head_explorer`", "code, position", build_s, time_changes(device, box.update, changes))


def chapter4(model, device: str, repeat: int, rows: list) -> None:
    from exercises_lib import duality as D

    templates = list(D.LEFT_RIGHT_TEMPLATES[:2] + D.PAIR_TEMPLATES)  # the explorer's defaults
    print("chapter 4 duality explorer")
    box, build_s = timed(lambda: D.duality_explorer(model), device)
    one = [(1, templates[0], "first word"), (1, templates[0], "second word"), (1, templates[2], "second word"),
           (0, templates[3], "second word"), (0, templates[1], "first word"), (0, templates[0], "first word")]
    changes = [c for _ in range(repeat) for c in one]
    report(rows, "ch. 4 `duality_explorer`", "pair, template, word first", build_s,
           time_changes(device, box.update, changes))


def chapter5(model, device: str, repeat: int, rows: list) -> None:
    from exercises_lib import duality, patching_choices
    from exercises_lib.models import build_standin

    toy = model if model.is_standin else build_standin("gpt2-small")  # the offline stand-in, gates and all
    clean, corrupt, gate_metric = patching_choices.and_or_task(toy)
    found = patching_choices.attention_effects_by_direction(toy, clean, corrupt, gate_metric)
    prompts = duality.left_right_prompts(model).subset([0, 1])
    dual = patching_choices.attention_effects_by_direction(
        model, prompts.clean_tokens, prompts.corrupt_tokens, duality.logit_diff_metric(prompts), threshold=0.2)
    experiments = {
        "AND gate (stand-in)": {d: found["heads"][d][..., 0] for d in ("denoise", "noise")},
        "OR gate (stand-in)": {d: found["heads"][d][..., 1] for d in ("denoise", "noise")},
        "duality prompts": {d: dual["heads"][d] for d in ("denoise", "noise")},
    }
    print("chapter 5 direction explorer")
    box, build_s = timed(lambda: patching_choices.direction_explorer(experiments, model=model), device)
    views = ["denoise (clean → corrupt)", "noise (corrupt → clean)", "denoise − noise"]
    changes = [(e, v) for _ in range(repeat) for e in experiments for v in views]
    report(rows, "ch. 5 `direction_explorer`", "experiment, view", build_s, time_changes(device, box.update, changes))


def main() -> None:
    args = parser(__doc__)
    args.add_argument("--repeat", type=int, default=3, help="times each explorer's sequence of changes is run")
    args.add_argument("--chapters", type=int, nargs="+", choices=CHAPTERS, default=list(CHAPTERS),
                      help="the chapters whose explorers are timed (default: all)")
    opts = args.parse_args()
    from exercises_lib.models import load_model

    torch.set_grad_enabled(False)
    kernel_like_display()
    print(f"torch threads {torch.get_num_threads()}, load average {loadavg()}")
    rows: list = []
    runs = {0: chapter0, 1: chapter1, 2: chapter2, 3: chapter3, 4: chapter4, 5: chapter5}
    models: dict = {}
    for chapter in sorted(set(opts.chapters)):
        name = "attn-only-4l" if chapter == 3 else "gpt2-small"
        if name not in models:
            models[name] = load_model(name, source=opts.source, device=opts.device, quiet=True)
            print(f"model: {models[name].display_name}")
        runs[chapter](models[name], opts.device, opts.repeat, rows)
    print(f"\nexplorer                                     control changes              changes  build (s)  "
          f"median (s)  slowest (s)  limit 0.5 s  load 1 min")
    for explorer, controls, n, build_s, med, worst, verdict, load in rows:
        print(f"{explorer:<44} {controls:<28} {n:>7} {build_s:>10.2f} {med:>11.3f} {worst:>12.3f}  "
              f"{verdict:<11}  {load:>10.2f}")
    print(f"load average at the end {loadavg()}")


if __name__ == "__main__":
    main()
