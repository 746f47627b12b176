"""A stream's chunks, straight onto the client's socket.

A stream of tokens is mostly small chunks, and Tornado's `write` + `flush`
spends more per chunk than the translation does (a buffer, a transform pass,
the chunk framing, two futures). Once the response head is out (through
Tornado, so its headers and framing decisions stand), each chunk is framed
here and offered to the socket; only what the socket does not take at once is
queued on the IOStream, which keeps the order, finishes the response after it
and reports a broken connection the Tornado way.

The socket carries no Nagle delay while a stream runs: a token written while
an earlier one is unacknowledged would otherwise wait for that ACK (up to the
client's delayed-ACK time), which is inter-token latency a user sees.

A client that reads slower than its provider sends would have the gateway
hold the difference; past `HIGH` queued bytes the provider's connection is
paused (TCP then slows the provider) until the client catches up.
"""
HIGH = 1 << 20  # bytes queued for one client before its provider is paused


class ChunkWriter:
    def __init__(self, connection, pause, resume):
        self.stream = connection.stream
        self.chunked = connection._chunking_output  # Tornado's decision for this response (HTTP/1.0: raw)
        self.pause, self.resume = pause, resume
        self.queued = 0      # bytes handed to the IOStream since it last had nothing to write
        self.paused = False
        self.stream.set_nodelay(True)

    def write(self, data):
        stream = self.stream
        if stream.closed():
            return  # the client is gone: the handler hears of it from Tornado
        if self.chunked:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        if not stream.writing():
            self.queued = 0
            try:
                sent = stream.socket.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                sent = 0  # the IOStream's write below meets the same error and closes the stream
            if sent == len(data):
                return
            data = data[sent:]
        self.queued += len(data)
        done = stream.write(data)
        if self.queued > HIGH and not self.paused:
            self.paused = True
            self.pause()
            done.add_done_callback(self._drained)

    def _drained(self, future):
        self.paused = False
        self.queued = 0
        if not future.exception():  # a closed stream: nothing to resume for
            self.resume()

