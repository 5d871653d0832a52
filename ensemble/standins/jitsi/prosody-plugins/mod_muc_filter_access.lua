-- TEST STAND-IN (ensemble) for Jitsi's mod_muc_filter_access; not Jitsi's software.
-- Loaded on a MUC component: presence (a join, a nick change, a leave) is accepted only from
-- users of the domains in `muc_filter_whitelist`; any other presence is dropped without a reply,
-- like Jitsi's module. Without the option the module stays inactive and says so.

local split_jid = require "util.jid".split;

local allowed_domains = module:get_option_set("muc_filter_whitelist");
if not allowed_domains then
	module:log("warn", "TEST STAND-IN muc_filter_access: no muc_filter_whitelist on %s, inactive", module.host);
	return;
end

local function drop_foreign_presence(event)
	local from = event.stanza.attr.from;
	local _, from_domain = split_jid(from);
	if from == nil or not allowed_domains:contains(from_domain) then
		module:log("warn", "TEST STAND-IN muc_filter_access: presence from %s dropped", tostring(from));
		return true; -- handled: the MUC never sees it
	end
end

-- before the MUC's own presence handlers, for room, bare and full addresses
module:hook("presence/host", drop_foreign_presence, 2000);
module:hook("presence/bare", drop_foreign_presence, 2000);
module:hook("presence/full", drop_foreign_presence, 2000);
module:log("info", "TEST STAND-IN muc_filter_access on %s: presence only from %s", module.host,
	tostring(allowed_domains));
