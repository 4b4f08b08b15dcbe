// Ranking by drag or keyboard. The card order is the ranking; it is written into each card's rank input so
// the form also works without this script. Model text is never read or written here (no innerHTML).
(function () {
  "use strict";
  const list = document.getElementById("ranking");
  if (!list) return;
  const cards = () => Array.from(list.querySelectorAll(".card"));

  function renumber() {
    cards().forEach((card, pos) => { card.querySelector(".rank").value = String(pos + 1); });
  }

  function moveTo(card, pos) {  // pos: 0-based place in the ranking
    const others = cards().filter((c) => c !== card);
    pos = Math.max(0, Math.min(pos, others.length));
    list.insertBefore(card, others[pos] || null);
    renumber();
    card.focus();
  }

  // Typing a rank into an input reorders the cards to match.
  list.addEventListener("change", (ev) => {
    if (!ev.target.classList.contains("rank")) return;
    const card = ev.target.closest(".card");
    moveTo(card, parseInt(ev.target.value, 10) - 1);
  });

  list.addEventListener("keydown", (ev) => {
    const card = ev.target;
    if (!card.classList || !card.classList.contains("card")) return;  // keys inside inputs behave normally
    const pos = cards().indexOf(card);
    if (/^[1-9]$/.test(ev.key)) { moveTo(card, parseInt(ev.key, 10) - 1); ev.preventDefault(); }
    else if (ev.key === "ArrowUp") { moveTo(card, pos - 1); ev.preventDefault(); }
    else if (ev.key === "ArrowDown") { moveTo(card, pos + 1); ev.preventDefault(); }
  });

  let dragged = null;
  list.addEventListener("dragstart", (ev) => {
    dragged = ev.target.closest(".card");
    dragged.classList.add("dragging");
    ev.dataTransfer.effectAllowed = "move";
  });
  list.addEventListener("dragend", () => { if (dragged) dragged.classList.remove("dragging"); dragged = null; renumber(); });
  list.addEventListener("dragover", (ev) => {
    const over = ev.target.closest && ev.target.closest(".card");
    if (!dragged || !over || over === dragged) return;
    ev.preventDefault();
    const box = over.getBoundingClientRect();
    list.insertBefore(dragged, ev.clientY < box.top + box.height / 2 ? over : over.nextSibling);
  });
  list.addEventListener("drop", (ev) => { ev.preventDefault(); renumber(); });
})();
