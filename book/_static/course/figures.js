/* Course book: figures and text outputs fitted to the page once drawn.
 *
 * Figures are drawn from the layout the notebook gave them, for a notebook's
 * width; the book's text column may be narrower. Once each plotly figure is
 * drawn, this script measures it and adjusts what does not fit:
 *   - a title wider than the figure (or running under plotly's toolbar) is
 *     broken into lines, and the top margin grows to hold them;
 *   - subplot titles or axis titles drawn over each other get a smaller font
 *     and are broken in two; tick labels that run together are thinned;
 *   - heatmap rows and columns numbered by integers get ticks on integers only;
 * and text tables (<pre>) or HTML tables wider than the column get a smaller
 * font so that every column shows. A progress bar that finished and hid itself
 * is removed with the note under it (it would be an empty box). Loaded on every page by book/_ext/coursebook.py.
 */
(function () {
  "use strict";
  const FIXED = "data-course-fitted";

  function box(el) {
    const r = el.getBoundingClientRect();
    return { l: r.left, t: r.top, r: r.right, b: r.bottom, w: r.width, h: r.height };
  }
  function overlaps(a, b, tol) {
    return Math.min(a.r, b.r) - Math.max(a.l, b.l) > tol && Math.min(a.b, b.b) - Math.max(a.t, b.t) > tol;
  }

  // Break an HTML-ish plotly title into lines of at most `chars` visible characters.
  function wrapTitle(text, chars) {
    const out = [];
    // the model's name in its <span> is kept on one line
    const glued = text.replace(/(<span[^>]*>)([^<]*)(<\/span>)/g, (m, a, b, c) => a + b.replace(/ /g, "\u0001") + c)
      .replace(/<[a-z\/][^>]*>/gi, (tag) => tag.replace(/ /g, "\u0002"));  // spaces inside tags
    for (const line of glued.split(/<br\s*\/?>/i)) {
      const words = line.split(" ");
      let cur = "", curLen = 0;
      for (const w of words) {
        const len = w.replace(/<[a-z\/][^>]*>/gi, "").length;
        if (cur && curLen + 1 + len > chars) {
          out.push(cur);
          cur = w; curLen = len;
        } else {
          cur = cur ? cur + " " + w : w;
          curLen += (curLen ? 1 : 0) + len;
        }
      }
      out.push(cur);
    }
    // a tag opened on one line and closed on a later one: close and reopen it
    for (let i = 0; i < out.length - 1; i++) {
      const open = out[i].match(/<(span|b|i)([^>]*)>(?![\s\S]*<\/\1>)/);
      if (open) {
        out[i] += `</${open[1]}>`;
        out[i + 1] = `<${open[1]}${open[2]}>` + out[i + 1];
      }
    }
    return out.join("<br>").replace(/[\u0001\u0002]/g, " ");
  }

  function titleText(layout) {
    const t = layout.title;
    return typeof t === "string" ? t : (t && t.text) || "";
  }

  function fitTitle(gd, update) {
    const svg = gd.querySelector("svg.main-svg");
    const title = gd.querySelector(".gtitle");
    if (!svg || !title) return;
    const fig = box(svg), tb = box(title);
    const bar = gd.querySelector(".modebar");
    const mb = bar ? box(bar) : null;
    // plotly's toolbar (about 270 px when it has not been drawn yet) stays clear of the title
    const room = fig.r - 10 - ((mb && mb.w > 1) ? mb.w + 10 : 270) - Math.max(tb.l, fig.l + 5);
    const text = titleText(gd.layout);
    const visibleLen = text.replace(/<br\s*\/?>/gi, "\n").replace(/<[a-z\/][^>]*>/gi, "")
      .split("\n").reduce((m, s) => Math.max(m, s.length), 0);
    if (tb.w <= room || !visibleLen) return;
    const chars = Math.max(20, Math.floor(0.9 * visibleLen * room / tb.w));  // 10% spare: glyphs differ in width
    const wrapped = wrapTitle(text, chars);
    if (wrapped === text) return;
    const lines = wrapped.split("<br>").length, before = text.split(/<br\s*\/?>/i).length;
    const extra = 22 * (lines - before);
    const margin = (gd.layout.margin && gd.layout.margin.t) || 80;
    const top = Math.max(margin + extra, 56 + 24 * lines);
    const height = (gd._fullLayout.height || 450) + (top - margin);
    update["title.text"] = wrapped;
    update["margin.t"] = top;
    update.height = height;
    // the first line 16 px below the top: the lines grow down into the margin, not the plot
    update["title.yref"] = "container";
    update["title.yanchor"] = "top";
    update["title.y"] = 1 - 16 / height;
  }

  function integerTicks(gd, update) {
    const full = gd._fullLayout || {};
    for (const tr of gd._fullData || []) {
      if (!["heatmap", "histogram2d"].includes(tr.type) || tr.visible === false) continue;
      for (const letter of ["x", "y"]) {
        const id = tr[letter + "axis"];
        const name = letter + "axis" + id.slice(1);
        const ax = full[name];
        if (!ax || ax.type !== "linear") continue;
        const z = tr.z || [];
        let coords = tr[letter];
        const n = letter === "y" ? z.length : (z[0] || []).length;
        if (coords === undefined || coords === null) {
          const start = tr[letter + "0"] ?? 0, step = tr["d" + letter] ?? 1;
          coords = Array.from({ length: n }, (_, k) => start + k * step);
        }
        coords = Array.from(coords);
        if (!coords.length || !coords.every((v) => typeof v === "number" && Number.isInteger(v))) continue;
        if ((ax._vals || []).some((v) => !v.minor && Math.abs(v.x - Math.round(v.x)) > 1e-9)) {
          update[name + ".dtick"] = n <= 24 ? 1 : Math.ceil(n / 12);
          update[name + ".tick0"] = 0;
        }
      }
    }
  }

  function separateLabels(gd, update) {
    const texts = Array.from(gd.querySelectorAll(".annotation-text, .xtick text, .ytick text, .infolayer text[class*='title']"))
      .filter((t) => t.textContent.trim() && t.getBBox && t.getBBox().width > 0);
    const full = gd._fullLayout || {};
    const layout = gd.layout;
    const annotations = Array.from(gd.querySelectorAll(".annotation")).map((a) => a.querySelector(".annotation-text"));
    for (let i = 0; i < texts.length; i++) {
      for (let j = i + 1; j < texts.length; j++) {
        const a = texts[i], b = texts[j];
        if (!overlaps(box(a), box(b), 2)) continue;
        for (const el of [a, b]) {
          const k = annotations.indexOf(el);
          if (k >= 0 && layout.annotations && layout.annotations[k]) {
            const text = layout.annotations[k].text || "";
            if (!/<br/i.test(text) && text.includes(" ")) {
              const mid = text.length / 2;
              let cut = text.lastIndexOf(" ", mid);
              if (cut < 0) cut = text.indexOf(" ");
              update[`annotations[${k}].text`] = text.slice(0, cut) + "<br>" + text.slice(cut + 1);
            }
            update[`annotations[${k}].font.size`] = 11;
            continue;
          }
          const tick = el.closest(".xtick, .ytick");
          if (tick) {
            const letter = tick.classList.contains("xtick") ? "x" : "y";
            const axisGroup = tick.closest("[class*='" + letter + "axislayer']") || tick.parentNode;
            const m = (axisGroup.getAttribute("class") || "").match(new RegExp(letter + "\\d*"));
            const name = letter + "axis" + ((m && m[0].slice(1)) || "");
            const ax = full[name];
            if (!ax) continue;
            if (ax.type === "log") update[name + ".dtick"] = 1;
            else update[name + ".nticks"] = Math.max(2, Math.floor((ax._vals || []).length / 2));
            update[name + ".tickfont.size"] = 10;
            continue;
          }
          const cls = el.getAttribute("class") || "";
          const m = cls.match(/([xy]\d*)title/);
          if (m) update[m[1][0] + "axis" + m[1].slice(1) + ".title.font.size"] = 11;
        }
      }
    }
  }

  function fitFigure(gd, round) {
    if (!gd.layout || !window.Plotly) return;
    const update = {};
    fitTitle(gd, update);
    integerTicks(gd, update);
    separateLabels(gd, update);
    if (Object.keys(update).length && round < 3) {
      if (update.height && gd.style.height) gd.style.height = update.height + "px";  // the div holds the taller figure
      window.Plotly.relayout(gd, update).then(() => fitFigure(gd, round + 1));
    } else {
      gd.setAttribute(FIXED, "1");
    }
  }

  function fitText() {
    const column = document.querySelector("article.bd-article") || document.body;
    const right = column.getBoundingClientRect().right;
    for (const pre of document.querySelectorAll(".cell_output pre:not([" + FIXED + "])")) {
      pre.setAttribute(FIXED, "1");
      const lines = pre.innerText.split("\n");
      const longest = lines.reduce((m, s) => Math.max(m, s.trimEnd().length), 0);
      if (!longest) continue;
      const probe = document.createElement("span");
      probe.textContent = "x".repeat(100);
      pre.appendChild(probe);
      const charWidth = probe.getBoundingClientRect().width / 100;
      probe.remove();
      const cs = getComputedStyle(pre);
      const r = pre.getBoundingClientRect();
      const avail = Math.min(r.right, right) - r.left - parseFloat(cs.paddingLeft) - parseFloat(cs.paddingRight) - 4;
      const fits = Math.floor(avail / charWidth);
      if (longest > fits) {
        const scale = Math.max(0.55, fits / longest);
        pre.style.fontSize = (parseFloat(cs.fontSize) * scale).toFixed(2) + "px";
      }
    }
    for (const table of document.querySelectorAll(".cell_output table:not([" + FIXED + "])")) {
      table.setAttribute(FIXED, "1");
      if (table.getBoundingClientRect().right > right + 2) {
        table.classList.add("course-table-fit");
      }
    }
  }

  // A progress bar that finished and was dismissed (tqdm's leave=False hides it) has nothing
  // to show on a static page: drop it, and the note under it that would point at it.
  function dropFinishedProgressBars() {
    for (const sub of document.querySelectorAll(".cell_output .widget-subarea")) {
      const top = sub.firstElementChild;
      if (!top || !sub.querySelector(".widget-hprogress, .widget-vprogress")) continue;
      if (getComputedStyle(top).visibility !== "hidden" && getComputedStyle(top).display !== "none") continue;
      let next = sub.nextElementSibling;
      while (next && next.tagName.toLowerCase() === "script") {
        const after = next.nextElementSibling;
        next.remove();
        next = after;
      }
      if (next && next.matches(".course-widget-note")) next.remove();
      sub.remove();
    }
  }

  function pass() {
    dropFinishedProgressBars();
    fitText();
    for (const gd of document.querySelectorAll(".js-plotly-plot:not([" + FIXED + "])")) {
      if (gd.querySelector("svg.main-svg") && gd._fullLayout) {
        gd.setAttribute(FIXED, "0");
        fitFigure(gd, 0);
      }
    }
  }

  let runs = 0;
  function poll() {
    pass();
    if (++runs < 40) setTimeout(poll, 250);
  }
  if (document.readyState === "complete") poll();
  else window.addEventListener("load", poll);
})();
