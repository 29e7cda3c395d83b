// Decodes Avro single-object encoded files with Apache Avro's own BinaryMessageDecoder.
// Usage: java -cp 'libs/*' AvroDecode.java SCHEMA.avsc [OLD_WRITER.avsc ...] -- RECORD.bin ...
// Prints the schema's 64-bit Rabin fingerprint (hex, little-endian as on the wire), then one
// JSON line per record. Writer schemas after the first are registered so older records resolve.
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.HexFormat;
import org.apache.avro.Schema;
import org.apache.avro.SchemaNormalization;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.message.BinaryMessageDecoder;

public class AvroDecode {
  public static void main(String[] args) throws Exception {
    Schema reader = new Schema.Parser().parse(Files.readString(Path.of(args[0])));
    BinaryMessageDecoder<GenericRecord> decoder = new BinaryMessageDecoder<>(GenericData.get(), reader);
    int i = 1;
    for (; i < args.length && !args[i].equals("--"); i++) {
      decoder.addSchema(new Schema.Parser().parse(Files.readString(Path.of(args[i]))));
    }
    long fp = SchemaNormalization.parsingFingerprint64(reader);
    byte[] le = ByteBuffer.allocate(8).order(ByteOrder.LITTLE_ENDIAN).putLong(fp).array();
    System.out.println("fingerprint " + HexFormat.of().formatHex(le));
    for (i = i + 1; i < args.length; i++) {
      System.out.println(decoder.decode(Files.readAllBytes(Path.of(args[i]))));
    }
  }
}
