// ensemble front door: "Lancer une réunion". Normalises the typed name into a room name the front
// door accepts (ASCII letters, digits, - and _), or picks a random readable one when it is empty.
"use strict";
(function () {
  var WORDS = {
    fr: [["Pingouins", "Castors", "Renards", "Hiboux", "Dauphins", "Lions", "Moineaux", "Chats", "Loups", "Ours"],
         ["Joyeux", "Curieux", "Rapides", "Sages", "Calmes", "Audacieux", "Malins", "Heureux", "Paisibles", "Vaillants"],
         ["Chantent", "Dansent", "Voyagent", "Discutent", "Jardinent", "Nagent", "Revent", "Cuisinent", "Lisent", "Rient"]],
    en: [["Penguins", "Beavers", "Foxes", "Owls", "Dolphins", "Lions", "Sparrows", "Cats", "Wolves", "Bears"],
         ["Happy", "Curious", "Quick", "Wise", "Calm", "Bold", "Clever", "Merry", "Gentle", "Brave"],
         ["Sing", "Dance", "Travel", "Chat", "Garden", "Swim", "Dream", "Cook", "Read", "Laugh"]]
  };
  var MESSAGES = {
    fr: "Ce nom ne contient aucune lettre ni chiffre utilisable.",
    en: "This name has no usable letter or digit."
  };

  function pick(list) {
    var n = new Uint32Array(1);
    window.crypto.getRandomValues(n);
    return list[n[0] % list.length];
  }

  function randomName(lang) {
    var w = WORDS[lang] || WORDS.fr;
    return pick(w[1]) + pick(w[0]) + pick(w[2]) + String(10 + (Date.now() % 90));
  }

  // "Réunion d'équipe" -> "Reunion-d-equipe": accents dropped, other characters become "-".
  function normalise(text) {
    return text.normalize("NFD").replace(/[\u0300-\u036f]/g, "")
      .replace(/[^A-Za-z0-9_-]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 60);
  }

  document.addEventListener("DOMContentLoaded", function () {
    var form = document.getElementById("start");
    var input = document.getElementById("room");
    var error = document.getElementById("room-error");
    var lang = form.getAttribute("data-lang") || "fr";
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var typed = input.value.trim();
      var room = typed === "" ? randomName(lang) : normalise(typed);
      if (room === "") {
        error.textContent = MESSAGES[lang] || MESSAGES.fr;
        input.setAttribute("aria-invalid", "true");
        input.focus();
        return;
      }
      window.location.assign("/" + room);
    });
  });
})();
