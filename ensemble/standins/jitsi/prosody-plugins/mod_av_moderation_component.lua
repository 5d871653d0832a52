-- TEST STAND-IN (ensemble) for Jitsi's mod_av_moderation_component (audio/video moderation); not Jitsi's software.
-- A component on the conference MUC (`muc_component`, an error without it, like upstream's) that
-- announces itself to clients as a "av_moderation" identity of the main VirtualHost (mod_features_identity).
-- What it does for a meeting is not reproduced: no client of the tests uses it.

local component = module:require "standin_component";

if module:get_host_type() ~= "component" then
	return; -- loaded on a VirtualHost (older layouts): nothing to do there
end
local muc_component = component.require_muc_component(module, "av_moderation_component");
if muc_component == nil then
	return;
end
component.announce(module, "av_moderation");
module:log("info", "TEST STAND-IN av_moderation_component for %s", muc_component);
