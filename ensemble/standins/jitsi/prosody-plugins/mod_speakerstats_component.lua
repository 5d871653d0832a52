-- TEST STAND-IN (ensemble) for Jitsi's mod_speakerstats_component (speaker statistics); not Jitsi's software.
-- A component on the conference MUC (`muc_component`, an error without it, like upstream's) that
-- announces itself to clients as a "speakerstats" identity of the main VirtualHost (mod_features_identity).
-- What it does for a meeting is not reproduced: no client of the tests uses it.

module:require("standin_component").serve(module, "speakerstats_component", "speakerstats");
