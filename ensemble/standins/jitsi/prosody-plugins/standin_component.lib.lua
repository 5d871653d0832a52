-- TEST STAND-IN (ensemble) helper for the stand-ins of Jitsi's components; not Jitsi's software.
-- A component announces itself to the main VirtualHost (muc_mapper_domain_base) by firing
-- `jitsi-add-identity` there, as upstream's components do, once that host's features_identity is loaded
-- (hosts start in any order: if it is not loaded yet, wait for it).

local is_loaded = require "core.modulemanager".is_loaded;

local function announce(module, identity_type)
	local main_host = module:get_option_string("muc_mapper_domain_base");
	if not main_host then
		module:log("warn", "TEST STAND-IN %s: no muc_mapper_domain_base option set", identity_type);
		return;
	end
	local announced = false;
	local function fire()
		if announced or not is_loaded(main_host, "features_identity") then
			return;
		end
		announced = true;
		module:context(main_host):fire_event("jitsi-add-identity", { name = identity_type; host = module.host });
	end
	-- prosody fires module-loaded on the host that loaded the module
	local function watch(host_session)
		host_session.events.add_handler("module-loaded", function(event)
			if event.module == "features_identity" then
				fire();
			end
		end);
		fire();
	end
	if prosody.hosts[main_host] then
		watch(prosody.hosts[main_host]);
	else
		module:hook_global("host-activated", function(host)
			if host == main_host then
				watch(prosody.hosts[host]);
			end
		end);
	end
end

-- a component working on the conference MUC needs `muc_component`, like upstream's (an error otherwise)
local function require_muc_component(module, name)
	local muc_component = module:get_option_string("muc_component");
	if muc_component == nil then
		module:log("error", "TEST STAND-IN %s: no muc_component specified", name);
	end
	return muc_component;
end

-- the whole of a component stand-in that only announces itself: on a component host with `muc_component`
local function serve(module, name, identity_type)
	if module:get_host_type() ~= "component" then
		return; -- loaded on a VirtualHost (older layouts): nothing to do there
	end
	local muc_component = require_muc_component(module, name);
	if muc_component == nil then
		return;
	end
	announce(module, identity_type);
	module:log("info", "TEST STAND-IN %s for %s", name, muc_component);
	return muc_component;
end

return { announce = announce; require_muc_component = require_muc_component; serve = serve };
