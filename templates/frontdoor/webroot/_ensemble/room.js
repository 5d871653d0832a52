// ensemble front door: the canonicalising step of a room page whose key nginx cannot compute
// (accents, emoji, escapes: nginx cannot decode, NFKC-normalise or lower-case UTF-8).
// The key is the MUC node jitsi-meet will join for this page, computed here by the same browser
// engine that will run jitsi-meet, with jitsi-meet's rules (react/features/base/util/uri.ts:
// the path's last segment without the characters it excludes, then getBackendSafeRoomName).
// The page comes back once with ?ensemble_room=<key>, which the front door routes by, and without the
// characters jitsi-meet drops anyway (same room; upstream's nginx refuses room paths with a quote).
"use strict";
(function () {
  var EXCLUDED = /[:?#[\]@!$&'()*+,;=></"]/g;
  var KEY = /^(?!~)(?:[a-z0-9._~!()*-]|%[0-9a-f]{2}){1,1023}$/;

  function roomKey(name) {
    try {
      name = decodeURIComponent(name);
    } catch (e) {
      // not percent-encoded: jitsi-meet uses it as it is
    }
    return encodeURIComponent(name.normalize("NFKC").toLowerCase()).toLowerCase();
  }

  var path = window.location.pathname;
  var segment = path.slice(path.lastIndexOf("/") + 1).replace(EXCLUDED, "");
  var key = segment === "" ? "" : roomKey(segment);
  if (key === "") {
    window.location.replace("/");  // nothing left of the name: jitsi-meet would show its welcome page
    return;
  }
  if (!KEY.test(key)) {
    window.location.replace("/_ensemble/400.html");
    return;
  }
  var args = window.location.search.replace(/^\?/, "").split("&").filter(function (arg) {
    return arg !== "" && arg.indexOf("ensemble_room=") !== 0;
  });
  args.push("ensemble_room=" + key);
  window.location.replace(path.slice(0, path.lastIndexOf("/") + 1) + segment + "?" + args.join("&") +
    window.location.hash);
})();
