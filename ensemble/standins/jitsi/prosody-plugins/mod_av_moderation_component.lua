-- TEST STAND-IN (ensemble) for Jitsi's mod_av_moderation_component (audio/video moderation); not Jitsi's software.
-- A component on the conference MUC (`muc_component`, an error without it, like upstream's) that
-- announces itself to clients as a "av_moderation" identity of the main VirtualHost (mod_features_identity).
-- What it does for a meeting is not reproduced: no client of the tests uses it.

module:require("standin_component").serve(module, "av_moderation_component", "av_moderation");
