// ensemble front door: "Lancer une réunion". Turns the typed name into a room path (accents, capitals
// and emoji kept; spaces and the characters jitsi-meet removes from room names become "-"), or picks a
// random readable one when it is empty. The front door computes the room's key from the path.
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

  // "Réunion d'équipe" -> "Réunion-d-équipe" (jitsi-meet would drop the apostrophe and the space).
  function normalise(text) {
    var name = text.replace(/[\s:?#[\]@!$&'()*+,;=></"\\%.]+/g, "-").replace(/^-+|-+$/g, "");
    return Array.from(name).slice(0, 60).join("");  // whole characters: never half an emoji
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
      window.location.assign("/" + encodeURIComponent(room));
    });
  });
})();
