// The console's only script (served by the console; no CDN). Two jobs:
// 1. auto-refresh: re-fetch the page's live part (#live) every data-refresh seconds;
// 2. log in from a #token= link. (Secrets are never in a page until a form asks the server for them.)
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (live) {
    var seconds = parseFloat(live.getAttribute("data-refresh")) || 5;
    var refresh = function () {
      fetch(window.location.href, {headers: {"X-Console-Fragment": "live"}, credentials: "same-origin"})
        .then(function (response) {
          if (response.status === 401) {
            window.location.href = "/login?next=" + encodeURIComponent(window.location.pathname + window.location.search);
            return null;
          }
          return response.ok ? response.text() : null;
        })
        .then(function (html) { if (html !== null) { live.innerHTML = html; } })
        .catch(function () { /* the next tick tries again */ })
        .then(function () { window.setTimeout(refresh, seconds * 1000); });
    };
    window.setTimeout(refresh, seconds * 1000);
  }
  // `aidi console` prints /login#token=...: the fragment never reaches the server (nor its logs).
  var token = document.getElementById("token");
  if (token && window.location.hash.indexOf("#token=") === 0) {
    token.value = decodeURIComponent(window.location.hash.slice(7));
    window.history.replaceState(null, "", window.location.pathname + window.location.search);
    token.form.submit();
  }
}());
