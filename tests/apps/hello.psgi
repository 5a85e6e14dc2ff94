# A PSGI app for Starman under start_server: /slow answers after 100 ms.
use strict;
use warnings;
use Time::HiRes ();

my $body = "Hello from Starman\n";
sub {
    my $env = shift;
    Time::HiRes::sleep(0.1) if $env->{PATH_INFO} eq '/slow';
    return [200, ['Content-Type' => 'text/plain', 'Content-Length' => length $body,
                  'X-Worker-Pid' => $$], [$body]];
};
