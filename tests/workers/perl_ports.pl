#!/usr/bin/perl
# Writes what Server::Starter's server_ports() sees to $ARGV[0], then waits.
use strict;
use warnings;
use Server::Starter qw(server_ports);

my $env = defined $ENV{SERVER_STARTER_PORT} ? "found" : "missing";
my %ports = %{ server_ports() };
my $seen = keys %ports ? join(" ", map { "$_=$ports{$_}" } sort keys %ports) : "empty";
open my $fh, '>', "$ARGV[0].tmp" or die "$ARGV[0].tmp: $!";
print $fh "env: $env\nserver_ports: $seen\n";
close $fh;
rename "$ARGV[0].tmp", $ARGV[0] or die "$ARGV[0]: $!";
$SIG{TERM} = sub { exit 0 };
sleep 60 while 1;
