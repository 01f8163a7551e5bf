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
// Forms that change a device ask once more before they post (the server still
// requires the confirmation box and a reason without this script).
document.addEventListener("submit", function (e) {
  var text = e.target.getAttribute("data-confirm");
  if (text && !window.confirm(text)) e.preventDefault();
});
