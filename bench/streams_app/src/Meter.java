import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.math.BigDecimal;
import java.math.RoundingMode;
import java.nio.file.*;
import java.util.*;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.*;
import org.apache.kafka.streams.processor.api.*;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.state.*;

/**
 * The yardstick of issue 19 (bench/streams.py): a Kafka Streams application doing the
 * worker's core job on usage events, as a Kafka shop would write it in an afternoon.
 * Exactly-once v2, one stream thread, 100 ms commits; per event: a JSON parse, dedupe on
 * (tenant, event id) in RocksDB, rating by the longest prefix of the rate card (exported
 * by the driver), the balance in RocksDB as an exact decimal, one ledger entry, and a
 * recharge request the first time the balance falls below 5.
 * It does less than the worker: no validation of the contract, no lots, expiry, months,
 * outbox, alerts or commands. Prints "RESULT n rate second-half-rate" once `expected`
 * records are processed, then stops; or, given "stay", goes on until its standard input
 * closes, so that the driver can time a latency phase on it.
 * Arguments: bootstrap prefix expected card state-dir [commit-ms (100)] [stay].
 */
public class Meter {
  static final ObjectMapper M = new ObjectMapper();
  // table -> prefix -> {per_minute, increment, minimum, connect_fee}
  static final Map<String, Map<String, String[]>> CARD = new HashMap<>();
  // `done` is counted on the stream thread and polled by main: volatile, so main sees it.
  static long expected; static volatile long done = 0; static long t0 = 0, tHalf = 0;

  static String[] find(String table, String number) {
    Map<String, String[]> t = CARD.get(table);
    for (int n = Math.min(16, number.length()); n > 1; n--) {
      String[] r = t.get(number.substring(0, n));
      if (r != null) return r;
    }
    return null;
  }

  static class Apply implements Processor<String, byte[], String, byte[]> {
    ProcessorContext<String, byte[]> ctx; KeyValueStore<String, Long> seen; KeyValueStore<String, String> bal;
    public void init(ProcessorContext<String, byte[]> c) {
      ctx = c; seen = c.getStateStore("seen"); bal = c.getStateStore("balances");
    }
    public void process(Record<String, byte[]> rec) {
      try {
        JsonNode e = M.readTree(rec.value());
        String id = e.get("event_id").asText(), tenant = e.get("tenant_id").asText();
        String key = tenant + "\u001f" + id;
        if (seen.get(key) == null) {
          seen.put(key, System.currentTimeMillis() + 7L * 86400_000L);
          String t;
          String number;
          if (e.has("call_type")) {
            boolean tf = e.get("call_type").asText().equals("toll_free_inbound");
            t = tf ? "toll_free_inbound" : "outbound";
            number = e.get("destination_number").asText();
          } else {
            boolean tf = e.get("leg_type").asText().equals("toll_free_dial_in");
            t = tf ? "toll_free_inbound" : "conferencing_dial_out";
            number = e.get("number").asText();
          }
          long secs = e.get("duration_seconds").asLong();
          String[] r = find(t, number);
          if (r != null && secs > 0) {
            long inc = Long.parseLong(r[1]), min = Long.parseLong(r[2]);
            long billed = Math.max(min, ((secs + inc - 1) / inc) * inc);
            BigDecimal charge = new BigDecimal(r[0]).multiply(BigDecimal.valueOf(billed))
                .divide(BigDecimal.valueOf(60), 4, RoundingMode.HALF_UP).add(new BigDecimal(r[3]));
            String old = bal.get(tenant);
            BigDecimal before = old == null ? BigDecimal.ZERO : new BigDecimal(old.split(",")[0]);
            boolean pending = old != null && old.endsWith(",p");
            BigDecimal after = before.subtract(charge);
            ObjectNode entry = M.createObjectNode();
            entry.put("entry_id", UUID.nameUUIDFromBytes((tenant + id).getBytes()).toString());
            entry.put("tenant_id", tenant); entry.put("cause_id", id); entry.put("kind", "usage");
            entry.put("amount", charge.negate().toPlainString()); entry.put("balance_after", after.toPlainString());
            entry.put("rate_prefix", number.substring(0, 3)); entry.put("billed_seconds", billed);
            // Stamped when written, as the worker's entries are, so that the latency
            // bench can split its time into before and after the write.
            ctx.forward(new Record<>(tenant, M.writeValueAsBytes(entry), System.currentTimeMillis()), "ledger");
            if (!pending && after.compareTo(BigDecimal.valueOf(5)) < 0) {
              ObjectNode req = M.createObjectNode();
              req.put("request_id", UUID.randomUUID().toString()); req.put("tenant_id", tenant);
              req.put("amount", "50.0000");
              ctx.forward(new Record<>(tenant, M.writeValueAsBytes(req), rec.timestamp()), "recharge");
              pending = true;
            }
            bal.put(tenant, after.toPlainString() + (pending ? ",p" : ""));
          }
        }
      } catch (Exception ex) { throw new RuntimeException(ex); }
      done++;
      if (done == 1) t0 = System.nanoTime();
      if (done == expected / 2) tHalf = System.nanoTime();
      if (done == expected) {
        long t1 = System.nanoTime();
        System.out.printf("RESULT %d %.1f %.1f%n", done, (done - 1) / ((t1 - t0) / 1e9),
            (expected - expected / 2) / ((t1 - tHalf) / 1e9));
        System.out.flush();
      }
    }
  }

  public static void main(String[] a) throws Exception {
    String bootstrap = a[0], prefix = a[1]; expected = Long.parseLong(a[2]);
    for (String line : Files.readAllLines(Paths.get(a[3]))) {
      String[] f = line.split("\t");
      CARD.computeIfAbsent(f[0], k -> new HashMap<>()).put(f[1], new String[]{f[2], f[3], f[4], f[5]});
    }
    Properties p = new Properties();
    p.put(StreamsConfig.APPLICATION_ID_CONFIG, "ks-" + prefix.replace(".", ""));
    p.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
    p.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.EXACTLY_ONCE_V2);
    p.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, 1);
    p.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, a.length > 5 ? Integer.parseInt(a[5]) : 100);
    p.put(StreamsConfig.STATE_DIR_CONFIG, a[4]);
    p.put(StreamsConfig.consumerPrefix("auto.offset.reset"), "earliest");
    Topology t = new Topology();
    t.addSource("src", Serdes.String().deserializer(), Serdes.ByteArray().deserializer(),
        prefix + "usage.calls", prefix + "usage.conferencing");
    t.addProcessor("apply", Apply::new, "src");
    t.addStateStore(Stores.keyValueStoreBuilder(Stores.persistentKeyValueStore("seen"), Serdes.String(), Serdes.Long()), "apply");
    t.addStateStore(Stores.keyValueStoreBuilder(Stores.persistentKeyValueStore("balances"), Serdes.String(), Serdes.String()), "apply");
    t.addSink("ledger", prefix + "ks.ledger", Serdes.String().serializer(), Serdes.ByteArray().serializer(), "apply");
    t.addSink("recharge", prefix + "ks.recharge", Serdes.String().serializer(), Serdes.ByteArray().serializer(), "apply");
    KafkaStreams ks = new KafkaStreams(t, p);
    ks.start();
    while (done < expected) Thread.sleep(200);
    if (a.length > 6 && a[6].equals("stay")) {
      while (System.in.read() != -1) { }
    }
    Thread.sleep(500);
    ks.close(java.time.Duration.ofSeconds(20));
    System.exit(0);
  }
}
