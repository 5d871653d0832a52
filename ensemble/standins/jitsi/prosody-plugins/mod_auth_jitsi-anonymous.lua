-- TEST STAND-IN (ensemble) for Jitsi's mod_auth_jitsi-anonymous; not Jitsi's software.
-- authentication = "jitsi-anonymous": every client may log in with SASL ANONYMOUS (a random
-- username per session), no password accounts. Jitsi's own module adds session resumption.

local new_sasl = require "util.sasl".new;

local provider = {};

function provider.test_password() return nil, "Password based auth not supported."; end
function provider.get_password() return nil, "Password not available."; end
function provider.set_password() return nil, "Password based auth not supported."; end
function provider.user_exists() return nil, "Only anonymous users are supported."; end
function provider.create_user() return nil, "Account creation/modification not supported."; end

function provider.get_sasl_handler()
	return new_sasl(module.host, {
		anonymous = function(sasl, username, realm) -- luacheck: ignore 212
			return true;
		end;
	});
end

module:provides("auth", provider);
module:log("info", "TEST STAND-IN anonymous authentication on %s", module.host);
