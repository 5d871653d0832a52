-- TEST STAND-IN (ensemble) for Jitsi's mod_end_conference (ending a meeting for everyone); not Jitsi's software.
-- A component on the conference MUC (`muc_component`, an error without it, like upstream's) that
-- announces itself to clients as a "end_conference" identity of the main VirtualHost (mod_features_identity).
-- What it does for a meeting is not reproduced: no client of the tests uses it.

local component = module:require "standin_component";

if module:get_host_type() ~= "component" then
	return; -- loaded on a VirtualHost (older layouts): nothing to do there
end
local muc_component = component.require_muc_component(module, "end_conference");
if muc_component == nil then
	return;
end
component.announce(module, "end_conference");
module:log("info", "TEST STAND-IN end_conference for %s", muc_component);
