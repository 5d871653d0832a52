-- TEST STAND-IN (ensemble) for Jitsi's mod_muc_hide_all; not Jitsi's software.
-- Loaded on a MUC component, like upstream's it keeps room names private:
-- * every new room is hidden, so a disco#items query on the component lists no room;
-- * a disco#info query on a room from anyone who is not in it is answered `forbidden`
--   (for a room that does not exist prosody answers item-not-found as usual).

local jid_bare = require "util.jid".bare;
local st = require "util.stanza";

local muc = module:depends("muc");

-- after the MUC's own defaults (muc_room_default_public), so hidden wins
module:hook("muc-room-pre-create", function(event)
	event.room:set_hidden(true);
end, -1);

local function occupants_only(event)
	local origin, stanza = event.origin, event.stanza;
	local room = muc.get_room_from_jid(jid_bare(stanza.attr.to));
	if room and not room:get_occupant_by_real_jid(stanza.attr.from) then
		origin.send(st.error_reply(stanza, "auth", "forbidden"));
		return true;
	end
end

-- before prosody's MUC answers disco#info (it hooks at a lower priority)
module:hook("iq-get/bare/http://jabber.org/protocol/disco#info:query", occupants_only, 1);
module:hook("iq-get/host/http://jabber.org/protocol/disco#info:query", occupants_only, 1);
module:log("info", "TEST STAND-IN muc_hide_all on %s: rooms hidden from disco#items", module.host);
