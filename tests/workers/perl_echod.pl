#!/usr/bin/perl
# A Perl worker that finds its socket with Server::Starter's own server_ports(),
# as upstream's test workers do: on a stream socket it answers each connection
# with "PID:" and what it read; on a UDP socket it answers each datagram so.
# The name of the signal that stops it goes to the file named by $ARGV[0].
use strict;
use warnings;
use IO::Select;
use IO::Socket;
use Server::Starter qw(server_ports);

my $signal_file = shift;
for my $name (qw(TERM USR1 QUIT)) {
    $SIG{$name} = sub {
        if ($signal_file) {
            open my $fh, '>', $signal_file or die "$signal_file: $!";
            print $fh $name;
            close $fh;
        }
        exit 0;
    };
}

my $ports = server_ports();
die "expected one socket, got: @{[ %$ports ]}\n" unless keys %$ports == 1;
my ($fd) = values %$ports;
my $sock = IO::Socket->new_from_fd($fd, 'r+') or die "fd $fd: $!";
# Perl runs a signal's handler between operations: a signal that lands just
# before a blocking call would wait for the next client.  Wake up each second.
my $select = IO::Select->new($sock);
if ($sock->sockopt(SO_TYPE) == SOCK_DGRAM) {
    while (1) {
        $select->can_read(1) or next;
        my $peer = $sock->recv(my $data, 1024) or next;
        $sock->send("$$:$data", 0, $peer);
    }
}
while (1) {
    $select->can_read(1) or next;
    my $conn = $sock->accept or next;
    $conn->sysread(my $data, 1024);
    $conn->syswrite("$$:$data");
}
