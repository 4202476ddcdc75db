// ipywidgets typesets widget labels through the MathJax 2 API
// (MathJax.Hub.Queue); the book loads MathJax 3, which has no Hub, so every
// widget with a label threw a TypeError. This gives MathJax 3 the one call
// ipywidgets makes. Loaded by book/_ext/coursebook.py on pages with widgets,
// before the widget manager.
(function () {
  function shim() {
    var mj = window.MathJax;
    if (!mj || mj.Hub) { return; }
    mj.Hub = {
      Queue: function (job) {
        var el = job && job[2];
        if (window.MathJax && window.MathJax.typesetPromise) {
          window.MathJax.typesetPromise(el ? [el] : undefined).catch(function () {});
        }
      },
    };
  }
  shim();
  document.addEventListener("DOMContentLoaded", shim);
  window.addEventListener("load", shim);
})();
