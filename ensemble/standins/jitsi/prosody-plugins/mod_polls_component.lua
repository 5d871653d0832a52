-- TEST STAND-IN (ensemble) for Jitsi's mod_polls_component; not Jitsi's software.
-- Since 2025 polls are a component of their own (`Component "polls.<domain>" "polls_component"`, no option)
-- instead of a MUC module; it announces itself to clients as a "polls" identity of the main VirtualHost
-- (muc_mapper_domain_base, through mod_features_identity). The polls themselves are not reproduced.

local component = module:require "standin_component";

component.announce(module, "polls");
module:log("info", "TEST STAND-IN polls_component on %s", module.host);
