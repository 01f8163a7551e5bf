// Rampart console: the only script. Pages work without it; it adds
// keyboard shortcuts: "/" focuses the search box, Escape leaves it.
document.addEventListener("keydown", function (e) {
  var q = document.querySelector("input[name=q]");
  if (!q) return;
  if (e.key === "/" && document.activeElement !== q && !/INPUT|TEXTAREA|SELECT/.test(document.activeElement.tagName)) {
    e.preventDefault();
    q.focus();
  } else if (e.key === "Escape" && document.activeElement === q) {
    q.blur();
  }
});
