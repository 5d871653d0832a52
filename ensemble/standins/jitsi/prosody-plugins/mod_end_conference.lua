-- TEST STAND-IN (ensemble) for Jitsi's mod_end_conference (ending a meeting for everyone); not Jitsi's software.
-- A component on the conference MUC (`muc_component`, an error without it, like upstream's) that
-- announces itself to clients as a "end_conference" identity of the main VirtualHost (mod_features_identity).
-- What it does for a meeting is not reproduced: no client of the tests uses it.

module:require("standin_component").serve(module, "end_conference", "end_conference");
