#!/bin/sh
# Install Marcador's Asterisk config with this container's AMI port and secret, then run Asterisk in the foreground.
set -eu
: "${AMI_SECRET:?set AMI_SECRET (the AMI password of the marcador user)}"
cp /opt/marcador-asterisk/*.conf /etc/asterisk/
sed -i "s|@AMI_PORT@|${AMI_PORT:-5038}|; s|@AMI_SECRET@|${AMI_SECRET}|" /etc/asterisk/manager.conf
# The module directory depends on the architecture of the image.
moddir=$(dirname "$(find /usr/lib -name app_confbridge.so | head -n1)")
sed -i "s|^astmoddir.*|astmoddir => ${moddir}|" /etc/asterisk/asterisk.conf
exec asterisk -f
