-- TEST STAND-IN (ensemble) for Jitsi's mod_features_identity; not Jitsi's software.
-- Loaded on the main VirtualHost: a component announces itself by firing `jitsi-add-identity`
-- ({ name = <type>, host = <component address> }) on this host; like upstream's, each one becomes a
-- disco#info identity of this host (category "component"), which is how clients find the components.

module:hook("jitsi-add-identity", function(event)
	module:log("info", "TEST STAND-IN features_identity: %s at %s", event.name, event.host);
	module:add_identity("component", event.name, event.host);
end);
module:log("info", "TEST STAND-IN features_identity on %s", module.host);
