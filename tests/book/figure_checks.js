// Defects a reader sees in the figures and outputs of a built book page, measured
// from the DOM and its computed geometry. Run by tests/book/test_browser.py
// (driver.execute_script); returns one finding per defect:
//   {kind, where, detail, case, area, marks}
// area: the box to show in a screenshot (the figure or output, page coordinates);
// marks: the offending boxes; case: the data-case of the enclosing element (the
// checks' own test page), else null.
const TOL = 2;  // px of overlap (or overhang) forgiven: font boxes include line gaps
const findings = [];
const page = (b) => ({l: b.left + scrollX, t: b.top + scrollY, r: b.right + scrollX, b: b.bottom + scrollY});
const rect = (e) => page(e.getBoundingClientRect());
const visible = (e) => {
  for (let a = e; a && a.nodeType === 1; a = a.parentNode) {
    const cs = getComputedStyle(a);
    if (cs.display === 'none' || cs.visibility === 'hidden' || parseFloat(cs.opacity) === 0) return false;
  }
  return true;
};
const box = (...rs) => {
  const l = Math.min(...rs.map(r => r.l)), t = Math.min(...rs.map(r => r.t));
  const r = Math.max(...rs.map(r => r.r)), b = Math.max(...rs.map(r => r.b));
  return {x: l, y: t, width: r - l, height: b - t};
};
// area: what to show in a screenshot (the figure or output); marks: the offending boxes
let current = null;  // the element being checked, for the case it belongs to
const add = (kind, where, detail, area, ...marks) => findings.push({
  kind, where, detail, case: current && current.closest('[data-case]') ? current.closest('[data-case]').dataset.case : null,
  area: box(area, ...marks), marks: marks.map(m => box(m))});
// An SVG text's glyph box as a quadrilateral in page coordinates (rotation kept).
const quad = (el) => {
  const bb = el.getBBox(), m = el.getScreenCTM();
  if (!m || !bb.width) return null;
  return [[bb.x, bb.y], [bb.x + bb.width, bb.y], [bb.x + bb.width, bb.y + bb.height], [bb.x, bb.y + bb.height]]
    .map(([x, y]) => [m.a * x + m.c * y + m.e + scrollX, m.b * x + m.d * y + m.f + scrollY]);
};
const quadRect = (q) => ({l: Math.min(...q.map(p => p[0])), t: Math.min(...q.map(p => p[1])),
                          r: Math.max(...q.map(p => p[0])), b: Math.max(...q.map(p => p[1]))});
const rectQuad = (r) => [[r.l, r.t], [r.r, r.t], [r.r, r.b], [r.l, r.b]];
// Depth of overlap of two convex polygons (separating axis theorem); <= 0 when apart.
const overlap = (P, Q) => {
  let best = Infinity;
  for (const poly of [P, Q]) for (let i = 0; i < poly.length; i++) {
    const [x1, y1] = poly[i], [x2, y2] = poly[(i + 1) % poly.length];
    let nx = y1 - y2, ny = x2 - x1;
    const n = Math.hypot(nx, ny);
    if (!n) continue;
    nx /= n; ny /= n;
    const a = P.map(([x, y]) => x * nx + y * ny), b = Q.map(([x, y]) => x * nx + y * ny);
    best = Math.min(best, Math.min(Math.max(...a), Math.max(...b)) - Math.max(Math.min(...a), Math.min(...b)));
  }
  return best;
};
const label = (el) => {
  const tick = el.closest('.xtick, .ytick');
  const c = (el.getAttribute('class') || '') + (tick ? ' ' + tick.getAttribute('class') : '');
  const role = c.includes('gtitle') ? 'title' : c.includes('annotation') ? 'subplot title' :
    /tick/.test(c) ? (el.closest('.cbaxis') ? 'colorbar tick' : c.replace(/tick.*/, '') + ' tick') :
    /title/.test(c) ? c.replace(/title.*/, '') + ' axis title' : c.includes('legendtext') ? 'legend' : c;
  return `${role} "${el.textContent.trim().slice(0, 50)}"`;
};

const figures = Array.from(document.querySelectorAll('.js-plotly-plot'));
figures.forEach((gd, index) => {
  current = gd;
  const svg = gd.querySelector('svg.main-svg');
  if (!svg) return;
  const where = `figure ${index + 1} "${(gd.querySelector('.gtitle') || {}).textContent || ''}"`.slice(0, 140);
  const fig = rect(svg);
  const texts = Array.from(gd.querySelectorAll(
    '.gtitle, .annotation-text, .xtick text, .ytick text, .infolayer text[class*="title"], .legendtext'))
    .filter(t => t.textContent.trim() && visible(t))
    .map(t => ({el: t, q: quad(t), name: label(t)}))
    .filter(t => t.q);
  // 1. a title (or any label) wider than its figure: the figure's SVG cuts it off
  for (const t of texts) {
    const r = quadRect(t.q);
    const over = Math.max(fig.l - r.l, r.r - fig.r, fig.t - r.t, r.b - fig.b);
    if (over > TOL) add('clipped-title', where, `${t.name} runs ${Math.round(over)} px outside the figure`, fig, r);
  }
  // 2. labels drawn over each other (tick labels run together, subplot titles collide)
  for (let i = 0; i < texts.length; i++) for (let j = i + 1; j < texts.length; j++) {
    const d = overlap(texts[i].q, texts[j].q);
    if (d > TOL) add('overlapping-labels', where, `${texts[i].name} overlaps ${texts[j].name} by ${Math.round(d)} px`,
                     fig, quadRect(texts[i].q), quadRect(texts[j].q));
  }
  // 3. the mode bar (plotly's toolbar, shown on hover) over a title or label
  for (const bar of gd.querySelectorAll('.modebar')) {
    const mb = rect(bar);
    if (mb.r - mb.l < 1) continue;
    for (const t of texts) {
      if (!/title|legend/.test(t.name)) continue;
      const d = overlap(rectQuad(mb), t.q);
      if (d > 0) add('toolbar-over-title', where, `the toolbar covers ${t.name} (${Math.round(d)} px)`, fig, mb, quadRect(t.q));
    }
  }
  // 4. non-integer ticks on an axis of cells or categories numbered by integers
  // (a heatmap's rows and columns, a bar chart's bars: layers, heads)
  const layout = gd._fullLayout || {};
  const onAxis = {};
  for (const tr of gd._fullData || []) {
    if (tr.visible === false) continue;
    const letters = ['heatmap', 'histogram2d'].includes(tr.type) ? ['x', 'y'] :
      ['bar', 'box', 'violin'].includes(tr.type) ? [tr.orientation === 'h' ? 'y' : 'x'] : [];
    for (const letter of letters) {
      const id = tr[letter + 'axis'];
      if (!id) continue;
      let coords = tr[letter];
      if (coords === undefined || coords === null) {
        // no coordinates: cell i sits at (x0 or 0) + i * (dx or 1)
        const z = tr.z || [];
        const n = letter === 'y' ? z.length : (z[0] || []).length || (tr.y || []).length || (tr.x || []).length;
        const start = tr[letter + '0'] ?? 0, step = tr['d' + letter] ?? 1;
        coords = Array.from({length: n}, (_, k) => start + k * step);
      }
      (onAxis[id] = onAxis[id] || []).push(Array.from(coords));
    }
  }
  for (const [id, lists] of Object.entries(onAxis)) {
    const ax = layout[id[0] + 'axis' + id.slice(1)];
    if (!ax || ax.type !== 'linear') continue;
    const values = lists.flat();
    if (!values.length || !values.every(v => typeof v === 'number' && Number.isInteger(v))) continue;
    if (new Set(values).size > 64) continue;
    const bad = (ax._vals || []).filter(v => !v.minor && Math.abs(v.x - Math.round(v.x)) > 1e-9);
    if (bad.length) {
      const ticks = Array.from(gd.querySelectorAll(`.${id[0]}tick text`)).filter(visible).map(rect);
      add('half-integer-ticks', where,
          `${id} axis holds integers (${[...new Set(values)].slice(0, 6).join(', ')}...) but has ticks at ${bad.slice(0, 4).map(v => v.text).join(', ')}`,
          fig, ...ticks);
    }
  }
});

// 5. output areas that show nothing: an empty widget (the note under it says "the widget above shows...")
for (const cell of document.querySelectorAll('.cell_output')) {
  current = cell;
  for (const child of cell.children) {
    const tag = child.tagName.toLowerCase();
    if (tag === 'script' || tag === 'style' || child.matches('.course-widget-note')) continue;
    const r = rect(child);
    const drawn = child.querySelector('svg, canvas, img, video, iframe, input, select, button, .widget-slider, progress');
    const text = (child.innerText || '').trim();
    if (r.b - r.t < 8 || (!text && !drawn)) {
      const note = child.nextElementSibling && child.nextElementSibling.matches('.course-widget-note') ? ' (the note under it says "the widget above shows...")' : '';
      add('empty-output', `output ${child.className || tag}`.slice(0, 100),
          `an output area ${Math.round(r.r - r.l)}x${Math.round(r.b - r.t)} px that shows nothing${note}`, rect(cell), r);
    }
  }
  for (const script of cell.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]')) {
    const prev = script.previousElementSibling;
    if (!prev || !prev.matches('.widget-subarea')) add('empty-output', 'widget', 'a widget view that was not rendered', rect(cell), rect(cell));
  }
}

// 6. tables cut at the right edge: an HTML table wider than the box that shows it,
// or a text table (lines in columns, in a <pre>) with rows longer than its visible width
const column = rect(document.querySelector('article.bd-article') || document.querySelector('main') || document.body);
const clipper = (el) => {
  for (let a = el; a && a !== document.body; a = a.parentElement)
    if (getComputedStyle(a).overflowX !== 'visible' && a.scrollWidth > a.clientWidth + 1) return a;
  return null;
};
const visibleRight = (el) => {
  const clip = clipper(el);
  const r = clip ? clip.getBoundingClientRect().left + scrollX + clip.clientWidth : Infinity;
  return Math.min(r, column.r);
};
for (const table of document.querySelectorAll('.cell_output table, article table')) {
  if (!visible(table)) continue;
  current = table;
  const r = rect(table), right = visibleRight(table);
  if (r.r - right > TOL) {
    const cells = Array.from(table.querySelectorAll('tr:first-child > *'));
    const cut = cells.find(c => rect(c).r > right + TOL);
    add('cut-table', 'table', `${Math.round(r.r - right)} px of the table are cut off at the right edge` +
        (cut ? `, in column "${cut.textContent.trim().slice(0, 40)}"` : ''), r, {l: right - 2, t: r.t, r: right + 2, b: r.b});
  }
}
const COLUMN_GAP = /\S {2,}(?=\S)/g;
for (const pre of document.querySelectorAll('.cell_output pre')) {
  if (!visible(pre)) continue;
  current = pre;
  const rows = pre.innerText.split('\n').filter(l => (l.trim().match(COLUMN_GAP) || []).length >= 2);
  if (rows.length < 2) continue;  // not a table
  const probe = document.createElement('span');
  probe.textContent = 'x'.repeat(100);
  pre.appendChild(probe);
  const charWidth = probe.getBoundingClientRect().width / 100;
  probe.remove();
  const r = rect(pre), cs = getComputedStyle(pre);
  const chars = Math.floor((visibleRight(pre) - r.l - parseFloat(cs.paddingLeft) - parseFloat(cs.borderLeftWidth)) / charWidth);
  const cut = rows.filter(l => l.trimEnd().length > chars);
  if (cut.length) {
    const row = cut[0].trimEnd();
    add('cut-table', 'text table', `${cut.length} of its ${rows.length} rows are cut after ${chars} characters, ` +
        `mid-column: "${row.slice(Math.max(0, chars - 30), chars)}|${row.slice(chars, chars + 20)}"`, r,
        {l: r.l + chars * charWidth, t: r.t, r: r.l + chars * charWidth + 2, b: r.b});
  }
}

// 7. circuitsvis figures whose tiles overflow: a tile's label spilling into the
// next tile, or anything drawn outside the figure's own box
for (const cv of document.querySelectorAll('[id^="circuits-vis-"]')) {
  current = cv;
  const c = rect(cv);
  for (const el of cv.querySelectorAll('*')) {
    const parent = el.parentElement;
    if (!visible(el) || !parent || !el.textContent.trim()) continue;
    const r = rect(el), p = rect(parent);
    if (r.r - r.l < 1) continue;
    const outside = Math.max(c.l - r.l, r.r - c.r);
    if (outside > TOL) {
      add('circuitsvis-overflow', `circuitsvis ${cv.id}`, `"${el.textContent.trim().slice(0, 30)}" reaches ${Math.round(outside)} px outside the figure`, c, r);
      continue;
    }
    // bigger than its tile (the tile's box is what the reader sees as the tile): it spills out
    const wide = (r.r - r.l) - (p.r - p.l) > TOL && Math.max(p.l - r.l, r.r - p.r) > TOL;
    const tall = (r.b - r.t) - (p.b - p.t) > TOL && Math.max(p.t - r.t, r.b - p.b) > TOL;
    if (wide || tall)
      add('circuitsvis-overflow', `circuitsvis ${cv.id}`,
          `label "${el.textContent.trim().slice(0, 30)}" is ${wide ? 'wider' : 'taller'} than its tile ` +
          `(${Math.round(r.r - r.l)}x${Math.round(r.b - r.t)} px in ${Math.round(p.r - p.l)}x${Math.round(p.b - p.t)} px)`, c, r, p);
  }
}
return findings;
