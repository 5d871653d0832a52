// TEST STAND-IN (ensemble) for Jitsi Meet's interface_config.js; not Jitsi's software.
var interfaceConfig = {
    APP_NAME: 'Jitsi Meet (TEST STAND-IN)',
    SHOW_JITSI_WATERMARK: false,
    TOOLBAR_BUTTONS: [ 'microphone', 'camera', 'desktop', 'chat', 'raisehand', 'reactions', 'etherpad',
        'settings', 'videoquality', 'security', 'hangup' ]
};
